"""POST /v1/completions: prompts as text or token ids; echo and logprobs as vLLM
returns them, so lm-evaluation-harness's `local-completions` scores exactly:
it sends token ids with echo, logprobs=1, max_tokens=1 and sums
token_logprobs[ctxlen:-1]. Token ids are scored as given (no BOS added)."""
import time
import uuid

from serving import request_checks as checks
from serving.bridge import Choices
from serving.request_checks import ApiError
from serving.text_stream import TextStream


def token_text(tokenizer, token_id):
  """A token as text; control tokens (<s>, <|end_of_turn|>) and UTF-8 byte pieces
  (<0xE4>), which decode to nothing or to U+FFFD alone, by their piece name."""
  text = tokenizer.decode([token_id])
  return text if text and text != '\ufffd' else tokenizer.piece(token_id)


def parse(body, served):
  cfg = served.config.serve
  settings = checks.sampling(body, cfg.max_n)
  settings['temperature'] = checks.number(body, 'temperature', 1.0, 0.0, 2.0)
  prompts = []
  for text, ids in checks.prompts(body, served.tokenizer.vocab_size):
    if ids is None:
      ids = [served.tokenizer.bos_id] * served.add_bos + served.tokenizer.encode(text)
      if not ids:
        raise ApiError('"prompt" is empty; give some text or token ids', 'prompt')
    prompts.append((text, ids))
  max_tokens = checks.integer(body, 'max_tokens', 16, 0)
  echo = checks.boolean(body, 'echo')
  if max_tokens == 0 and not echo:
    raise ApiError('"max_tokens"=0 only makes sense with "echo": true', 'max_tokens')
  logprobs = checks.integer(body, 'logprobs', None, 0, 1)
  for _, ids in prompts:
    checks.check_room(len(ids), max_tokens, served.engine.context_room, served.max_len)
  return prompts, settings, max_tokens, echo, logprobs


def _logprobs(tokenizer, prompt_ids, prompt_scores, generated, text_start):
  """vLLM's completion logprobs: tokens, token_logprobs (None for the first prompt
  token), top_logprobs ({token: log-prob} of the argmax and the token itself),
  text_offset (each token's start in the choice's text)."""
  ids, lps, tops = [], [], []
  if prompt_scores is not None:
    for j, token in enumerate(prompt_ids):
      ids.append(token)
      if j == 0:
        lps.append(None)
        tops.append(None)
        continue
      lp, top_id, top_lp = (prompt_scores[k][j] for k in ('logprobs', 'top_ids', 'top_logprobs'))
      lps.append(lp)
      tops.append({token_text(tokenizer, top_id): top_lp, token_text(tokenizer, token): lp})
  for token, lp, top_id, top_lp in generated:
    ids.append(token)
    lps.append(lp)
    tops.append({token_text(tokenizer, top_id): top_lp, token_text(tokenizer, token): lp})
  offsets, base_ids = [], prompt_ids if prompt_scores is not None else []
  for i in range(len(ids)):
    if i < len(base_ids):
      offsets.append(len(tokenizer.decode(ids[:i])))
    else:
      offsets.append(text_start + len(tokenizer.decode(ids[len(base_ids):i])))
  return {'tokens': [token_text(tokenizer, t) for t in ids], 'token_logprobs': lps,
          'top_logprobs': tops, 'text_offset': offsets}


async def complete(body, served, http_request):
  prompts, settings, max_tokens, echo, logprobs = parse(body, served)
  n = settings['n']
  all_ids = [ids for _, ids in prompts for _ in range(n)]
  eos = () if checks.boolean(body, 'ignore_eos') else (served.tokenizer.eos_id,)
  choices = Choices(served.engine, all_ids, http_request, max_tokens=max_tokens,
                    temperature=settings['temperature'], top_p=settings['top_p'],
                    seed=settings['seed'], stop_ids=eos,
                    prompt_logprobs=echo and logprobs is not None)
  texts = [TextStream(served.tokenizer, settings['stop']) for _ in all_ids]
  generated = [[] for _ in all_ids]
  scores, reasons = [None] * len(all_ids), [None] * len(all_ids)
  async for index, kind, data in choices.events():
    if kind == 'prompt':
      scores[index] = data
    elif kind == 'token' and reasons[index] is None:
      texts[index].add(data[0])
      generated[index].append(data)
      if texts[index].stopped:
        reasons[index] = 'stop'
        choices.cancel(index)
    elif kind == 'done' and reasons[index] is None:
      reasons[index] = 'stop' if data == 'cancelled' else data
    elif kind == 'error':
      raise ApiError(data, status=500, kind='internal_error')
  out = []
  for index, ids in enumerate(all_ids):
    texts[index].flush()
    text, prompt_text = texts[index].text, ''
    if echo:
      prompt_text = served.tokenizer.decode(ids)
    choice = {'index': index, 'text': prompt_text + text, 'finish_reason': reasons[index],
              'logprobs': None, 'stop_reason': None}
    if logprobs is not None:
      choice['logprobs'] = _logprobs(served.tokenizer, ids, scores[index] if echo else None,
                                     generated[index], len(prompt_text))
    out.append(choice)
  prompt_tokens = sum(len(ids) for ids in all_ids)
  completion = sum(len(t.ids) for t in texts)
  return {'id': f'cmpl-{uuid.uuid4().hex}', 'object': 'text_completion',
          'created': int(time.time()), 'model': served.name, 'choices': out,
          'usage': {'prompt_tokens': prompt_tokens, 'completion_tokens': completion,
                    'total_tokens': prompt_tokens + completion}}
