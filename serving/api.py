"""The HTTP layer: OpenAI-shaped requests in, engine requests out (FastAPI).

Every error a request can cause is answered as OpenAI's {"error": {...}} with a
4xx status; an unexpected failure is a 500 of the same shape, and the server goes
on serving."""
import json
import os
import re
import time

from fastapi import FastAPI
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.responses import JSONResponse
from fastapi.responses import Response
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from data_pipeline import chat_template
from serving import chat_completions
from serving import completions
from serving import completions_stream
from serving import request_checks as checks
from serving.request_checks import ApiError

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static', 'chat.html')


def _error(status, message, kind='invalid_request_error', param=None, code=None):
  return JSONResponse(ApiError(message, param, status, kind, code).body(), status_code=status)


async def _body(request):
  try:
    body = json.loads(await request.body() or b'null')
  except (ValueError, UnicodeDecodeError) as e:
    raise ApiError(f'the request body is not valid JSON ({e})') from None
  if not isinstance(body, dict):
    raise ApiError('the request body must be a JSON object')
  return body


def special_tokens(tokenizer):
  """{piece: id} of the control tokens (<s>, </s>, <pad>, chat roles, end-of-turn)."""
  ids = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, *tokenizer.chat_ids.values()}
  return {tokenizer.piece(i): i for i in ids if i >= 0 and tokenizer.piece(i).startswith('<')}


def encode_with_specials(tokenizer, text, specials):
  """Text with control-token strings as their single ids (as Hugging Face tokenizers
  split text at special tokens), the rest encoded normally."""
  if not specials:
    return tokenizer.encode(text)
  pattern = '(' + '|'.join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ')'
  ids = []
  for part in re.split(pattern, text):
    if part in specials:
      ids.append(specials[part])
    elif part:
      ids += tokenizer.encode(part)
  return ids


def create_app(served):
  app = FastAPI(title='run.py serve', docs_url=None, redoc_url=None)
  tokenizer = served.tokenizer
  specials = special_tokens(tokenizer)

  @app.exception_handler(ApiError)
  async def api_error(_, e: ApiError):
    return JSONResponse(e.body(), status_code=e.status)

  @app.exception_handler(RequestValidationError)
  async def validation_error(_, e):
    return _error(422, f'invalid request: {e.errors()[:1]}')

  @app.exception_handler(StarletteHTTPException)
  async def http_error(_, e):
    kind = 'not_found_error' if e.status_code == 404 else 'invalid_request_error'
    return _error(e.status_code, str(e.detail), kind)

  @app.exception_handler(Exception)
  async def internal_error(_, e):
    return _error(500, f'internal error: {type(e).__name__}: {e}', 'internal_error')

  @app.get('/health')
  async def health():
    return Response(status_code=200)

  @app.get('/stats')
  async def stats():
    busy, waiting = served.engine.load()
    return {'busy_slots': busy, 'waiting': waiting, 'max_batch': served.engine.max_batch,
            'decode_steps': served.engine.decode_steps,
            'compile_seconds': served.engine.compile_seconds,
            'prefill_buckets': served.engine.buckets}

  @app.get('/v1/models')
  async def models():
    return {'object': 'list', 'data': [{
        'id': served.name, 'object': 'model', 'created': int(time.time()),
        'owned_by': 'run.py', 'root': served.name, 'parent': None,
        'max_model_len': served.max_len, 'step': served.step, 'stage': served.stage,
        'quantize': served.quantize}]}

  @app.get('/tokenizer_info')
  async def tokenizer_info():
    return {'tokenizer_class': 'SentencePiece', 'bos_token': tokenizer.piece(tokenizer.bos_id),
            'eos_token': tokenizer.piece(tokenizer.eos_id),
            'pad_token': tokenizer.piece(tokenizer.pad_id),
            'unk_token': tokenizer.piece(tokenizer.unk_id),
            'add_bos_token': served.add_bos, 'model_max_length': served.max_len,
            'vocab_size': tokenizer.vocab_size,
            'chat_template': chat_template.JINJA_TEMPLATE if served.has_chat_tokens else None,
            'special_tokens': specials}

  @app.post('/tokenize')
  async def tokenize(request: Request):
    body = await _body(request)
    add_special = checks.boolean(body, 'add_special_tokens', True)
    if body.get('messages') is not None:
      messages = checks.messages(body)
      ids = [int(t) for t in chat_template.encode(
          tokenizer, messages,
          add_generation_prompt=checks.boolean(body, 'add_generation_prompt', True))[0]]
    elif isinstance(body.get('prompt'), str):
      ids = encode_with_specials(tokenizer, body['prompt'], specials)
      if add_special and served.add_bos:
        ids = [tokenizer.bos_id] + ids
    else:
      raise ApiError('give "prompt" (a string) or "messages"', 'prompt')
    return {'count': len(ids), 'max_model_len': served.max_len, 'tokens': ids,
            'token_strs': None}

  @app.post('/detokenize')
  async def detokenize(request: Request):
    body = await _body(request)
    ids = body.get('tokens')
    if not isinstance(ids, list):
      raise ApiError('"tokens" must be a list of token ids', 'tokens')
    checks.prompts({'prompt': ids or [0]}, tokenizer.vocab_size)  # ids in the vocabulary
    return {'prompt': tokenizer.decode(ids)}

  @app.post('/v1/completions')
  async def v1_completions(request: Request):
    body = await _body(request)
    if checks.boolean(body, 'stream'):
      return StreamingResponse(completions_stream.stream(body, served, request),
                               media_type='text/event-stream',
                               headers={'Cache-Control': 'no-cache'})
    return await completions.complete(body, served, request)

  @app.post('/v1/chat/completions')
  async def v1_chat_completions(request: Request):
    body = await _body(request)
    if checks.boolean(body, 'stream'):
      return StreamingResponse(chat_completions.stream(body, served, request),
                               media_type='text/event-stream',
                               headers={'Cache-Control': 'no-cache'})
    return await chat_completions.complete(body, served, request)

  @app.get('/', response_class=HTMLResponse)
  async def page():
    with open(PAGE, encoding='utf-8') as f:
      return HTMLResponse(f.read())

  return app
