"""POST /v1/chat/completions: messages in our chat template; a reply ends at
end-of-turn ("stop"), at a stop string ("stop") or at max_tokens ("length")."""
import json
import time
import uuid

from data_pipeline import chat_template
from serving import request_checks as checks
from serving.bridge import Choices
from serving.request_checks import ApiError
from serving.text_stream import TextStream


def parse(body, served):
  """(prompt ids, sampling settings, max_tokens) of a chat request, or ApiError."""
  if not served.has_chat_tokens:
    raise ApiError('this model\'s tokenizer has no chat tokens; use /v1/completions',
                   'messages')
  messages = checks.messages(body)
  cfg = served.config.serve
  settings = checks.sampling(body, cfg.max_n)
  ids = [int(t) for t in chat_template.encode(served.tokenizer, messages,
                                              add_generation_prompt=True)[0]]
  room = served.engine.context_room(len(ids))
  key = 'max_completion_tokens' if body.get('max_completion_tokens') is not None else 'max_tokens'
  max_tokens = checks.integer(body, key, None, 1)
  if max_tokens is None:
    max_tokens = max(1, min(cfg.default_max_tokens, room))
  checks.check_room(len(ids), max_tokens, served.engine.context_room, served.max_len)
  return ids, settings, max_tokens


def _start(served, ids, settings, max_tokens, http_request, ignore_eos=False):
  stop_ids = () if ignore_eos else (served.end_of_turn, served.tokenizer.eos_id)
  return Choices(served.engine, [ids] * settings['n'], http_request, max_tokens=max_tokens,
                 temperature=settings['temperature'], top_p=settings['top_p'],
                 seed=settings['seed'], stop_ids=stop_ids)


def _usage(prompt_len, counts):
  return {'prompt_tokens': prompt_len * len(counts), 'completion_tokens': sum(counts),
          'total_tokens': prompt_len * len(counts) + sum(counts)}


async def complete(body, served, http_request):
  """The whole answer at once (choices[].message)."""
  ids, settings, max_tokens = parse(body, served)
  choices = _start(served, ids, settings, max_tokens, http_request,
                   checks.boolean(body, 'ignore_eos'))
  texts = [TextStream(served.tokenizer, settings['stop']) for _ in range(settings['n'])]
  reasons = [None] * settings['n']
  async for index, kind, data in choices.events():
    if kind == 'token':
      texts[index].add(data[0])
      if texts[index].stopped:
        reasons[index] = 'stop'
        choices.cancel(index)
    elif kind == 'done' and reasons[index] is None:
      reasons[index] = 'stop' if data == 'cancelled' else data
    elif kind == 'error':
      raise ApiError(data, status=500, kind='internal_error')
  for text in texts:
    text.flush()
  return {'id': f'chatcmpl-{uuid.uuid4().hex}', 'object': 'chat.completion',
          'created': int(time.time()), 'model': served.name,
          'choices': [{'index': i, 'message': {'role': 'assistant', 'content': t.text},
                       'logprobs': None, 'finish_reason': reasons[i]}
                      for i, t in enumerate(texts)],
          'usage': _usage(len(ids), [len(t.ids) for t in texts])}


def _sse(obj):
  return f'data: {json.dumps(obj, ensure_ascii=False)}\n\n'


def stream(body, served, http_request):
  """SSE chat.completion.chunk lines: the role first, then text deltas (whole
  characters only), a last chunk per choice with its finish_reason, [DONE]."""
  ids, settings, max_tokens = parse(body, served)  # before the 200: errors stay 4xx
  choices = _start(served, ids, settings, max_tokens, http_request,
                   checks.boolean(body, 'ignore_eos'))
  options = body.get('stream_options') if isinstance(body.get('stream_options'), dict) else {}
  head = {'id': f'chatcmpl-{uuid.uuid4().hex}', 'object': 'chat.completion.chunk',
          'created': int(time.time()), 'model': served.name}

  def chunk(index, delta, reason=None):
    return _sse({**head, 'choices': [{'index': index, 'delta': delta, 'logprobs': None,
                                      'finish_reason': reason}]})

  async def lines():
    texts = [TextStream(served.tokenizer, settings['stop']) for _ in range(settings['n'])]
    ended = [False] * settings['n']
    for index in range(settings['n']):
      yield chunk(index, {'role': 'assistant', 'content': ''})
    async for index, kind, data in choices.events():
      if ended[index]:
        continue
      if kind == 'token':
        delta = texts[index].add(data[0])
        if delta:
          yield chunk(index, {'content': delta})
        if texts[index].stopped:
          ended[index] = True
          choices.cancel(index)
          yield chunk(index, {}, 'stop')
      elif kind == 'done':
        ended[index] = True
        rest = texts[index].flush()
        if rest:
          yield chunk(index, {'content': rest})
        yield chunk(index, {}, 'stop' if data == 'cancelled' else data)
      elif kind == 'error':
        ended[index] = True
        yield _sse({'error': {'message': data, 'type': 'internal_error', 'param': None,
                              'code': None}})
    if options.get('include_usage'):
      yield _sse({**head, 'choices': [], 'usage': _usage(len(ids), [len(t.ids) for t in texts])})
    yield 'data: [DONE]\n\n'
  return lines()
