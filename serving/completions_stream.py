"""POST /v1/completions with "stream": true: SSE text_completion chunks (whole
characters only), one last chunk per choice with its finish_reason, then [DONE]."""
import json
import time
import uuid

from serving import completions
from serving import request_checks as checks
from serving.bridge import Choices
from serving.request_checks import ApiError
from serving.text_stream import TextStream


def stream(body, served, http_request):
  prompts, settings, max_tokens, echo, logprobs = completions.parse(body, served)
  if logprobs is not None:  # before the 200: errors stay 4xx
    raise ApiError('"logprobs" with "stream": true is not supported; use "stream": false',
                   'logprobs')
  n = settings['n']
  all_ids = [ids for _, ids in prompts for _ in range(n)]
  eos = () if checks.boolean(body, 'ignore_eos') else (served.tokenizer.eos_id,)
  choices = Choices(served.engine, all_ids, http_request, max_tokens=max_tokens,
                    temperature=settings['temperature'], top_p=settings['top_p'],
                    seed=settings['seed'], stop_ids=eos)
  head = {'id': f'cmpl-{uuid.uuid4().hex}', 'object': 'text_completion',
          'created': int(time.time()), 'model': served.name}

  def chunk(index, text, reason=None):
    return 'data: ' + json.dumps({**head, 'choices': [{
        'index': index, 'text': text, 'logprobs': None, 'finish_reason': reason}]},
        ensure_ascii=False) + '\n\n'

  async def lines():
    texts = [TextStream(served.tokenizer, settings['stop']) for _ in all_ids]
    ended = [False] * len(all_ids)
    if echo:
      for index, ids in enumerate(all_ids):
        yield chunk(index, served.tokenizer.decode(ids))
    async for index, kind, data in choices.events():
      if ended[index]:
        continue
      if kind == 'token':
        delta = texts[index].add(data[0])
        if delta:
          yield chunk(index, delta)
        if texts[index].stopped:
          ended[index] = True
          choices.cancel(index)
          yield chunk(index, '', 'stop')
      elif kind == 'done':
        ended[index] = True
        rest = texts[index].flush()
        yield chunk(index, rest, 'stop' if data == 'cancelled' else data)
      elif kind == 'error':
        ended[index] = True
        yield 'data: ' + json.dumps({'error': {'message': data, 'type': 'internal_error',
                                               'param': None, 'code': None}}) + '\n\n'
    yield 'data: [DONE]\n\n'
  return lines()
