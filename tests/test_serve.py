"""`run.py serve` through the official openai client and raw HTTP: answers equal
`run.py generate`'s, streaming equals non-streaming, concurrent greedy answers equal
sequential ones, a disconnected stream frees its slot."""
import concurrent.futures
import json
import time

import httpx
import openai
import pytest

from tests.cli_helpers import run_cli
from tests.serve_helpers import chat_body
from tests.serve_helpers import get_json

pytestmark = pytest.mark.slow
PROMPTS = ['你好，请介绍一下你自己。', 'What is your favorite book?', '成语“画蛇添足”是什么意思？',
           'Give a short definition of the noun "river".'] * 4


@pytest.fixture(scope='module')
def client(serve_url):
  return openai.OpenAI(base_url=serve_url + '/v1', api_key='unused', max_retries=0)


def test_models_health_and_tokenizer(serve_url):
  models = get_json(serve_url + '/v1/models')
  assert models['object'] == 'list' and models['data'][0]['max_model_len'] == 256
  assert httpx.get(serve_url + '/health').status_code == 200
  info = get_json(serve_url + '/tokenizer_info')
  assert (info['bos_token'], info['eos_token']) == ('<s>', '</s>')
  ids = httpx.post(serve_url + '/tokenize', json={'prompt': 'hi<|end_of_turn|>',
                                                  'add_special_tokens': False}).json()
  with_bos = httpx.post(serve_url + '/tokenize', json={'prompt': 'hi'}).json()['tokens']
  assert ids['tokens'][-1] == info['special_tokens']['<|end_of_turn|>']
  assert with_bos == [2] + ids['tokens'][:-1] and ids['count'] == len(ids['tokens'])
  text = httpx.post(serve_url + '/detokenize', json={'tokens': with_bos}).json()['prompt']
  assert text == 'hi'


def test_chat_equals_generate_and_stream_equals_whole(client, served_workdir):
  result = run_cli('generate', f'--workdir={served_workdir}', '--chat', '--temperature=0',
                   '--max_new_tokens=24', '--json', *[f'--prompt={p}' for p in PROMPTS[:2]])
  assert result.returncode == 0, result.stderr[-2000:]
  expected = [s['text'] for s in json.loads(result.stdout.strip().splitlines()[-1])['samples']]
  for prompt, text in zip(PROMPTS[:2], expected):
    whole = client.chat.completions.create(model='w', messages=[
        {'role': 'user', 'content': prompt}], temperature=0, max_tokens=24)
    assert whole.choices[0].message.content == text
    assert whole.choices[0].finish_reason in ('stop', 'length')
    assert whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens <= 24
    chunks = list(client.chat.completions.create(model='w', messages=[
        {'role': 'user', 'content': prompt}], temperature=0, max_tokens=24, stream=True))
    assert chunks[0].choices[0].delta.role == 'assistant'
    deltas = [c.choices[0].delta.content or '' for c in chunks]
    assert ''.join(deltas) == text and '\ufffd' not in ''.join(deltas)
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert sum(bool(d) for d in deltas) > 1  # it streamed


def test_completions_echo_logprobs(client, serve_url):
  ids = httpx.post(serve_url + '/tokenize', json={'prompt': 'The cat sat on'}).json()['tokens']
  out = client.completions.create(model='w', prompt=ids, echo=True, logprobs=1, max_tokens=3,
                                  temperature=0, extra_body={'ignore_eos': True})
  choice = out.choices[0]
  lp = choice.logprobs
  assert len(lp.tokens) == len(ids) + 3 == len(lp.token_logprobs) == len(lp.text_offset)
  assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
  assert all(x < 0 for x in lp.token_logprobs[1:])
  for token_lp, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
    assert max(top.values()) >= token_lp - 1e-6
  assert choice.text.startswith('The cat sat on')
  assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
  # greedy: each generated token is its step's argmax
  assert all(abs(max(t.values()) - x) < 1e-6 for t, x in
             zip(lp.top_logprobs[len(ids):], lp.token_logprobs[len(ids):]))
  # the same prompt as text (BOS added as in training) scores the same
  text = client.completions.create(model='w', prompt='The cat sat on', echo=True, logprobs=1,
                                   max_tokens=1, temperature=0)
  assert text.choices[0].logprobs.token_logprobs[:len(ids)] == pytest.approx(
      lp.token_logprobs[:len(ids)], abs=1e-5)
  batch = client.completions.create(model='w', prompt=[ids, ids[:3]], max_tokens=2,
                                    temperature=0)
  assert [c.index for c in batch.choices] == [0, 1]
  seeded = [client.completions.create(model='w', prompt='Once', max_tokens=8, temperature=1.0,
                                      seed=7, n=2).choices for _ in range(2)]
  assert [c.text for c in seeded[0]] == [c.text for c in seeded[1]]


def _stream_text(serve_url, prompt):
  client = openai.OpenAI(base_url=serve_url + '/v1', api_key='unused', max_retries=0)
  stream = client.chat.completions.create(model='w', messages=[
      {'role': 'user', 'content': prompt}], temperature=0, max_tokens=32, stream=True)
  return ''.join(c.choices[0].delta.content or '' for c in stream)


def test_sixteen_concurrent_streams_equal_sequential(serve_url):
  prompts = [f'{p} ({i})' for i, p in enumerate(PROMPTS)]
  start = get_json(serve_url + '/stats')['decode_steps']
  alone = [_stream_text(serve_url, p) for p in prompts]
  middle = get_json(serve_url + '/stats')['decode_steps']
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    together = list(pool.map(lambda p: _stream_text(serve_url, p), prompts))
  assert together == alone
  assert len(set(alone)) > 4  # different prompts, different answers
  # they shared decode steps: far fewer than the same requests one after another
  sequential, batched = middle - start, get_json(serve_url + '/stats')['decode_steps'] - middle
  assert batched < sequential / 4, (batched, sequential)


def test_disconnect_frees_the_slot(serve_url):
  before = get_json(serve_url + '/stats')['decode_steps']
  body = chat_body('Tell me a long story.', max_tokens=200, ignore_eos=True, stream=True)
  with httpx.stream('POST', serve_url + '/v1/chat/completions', json=body) as response:
    lines = response.iter_lines()
    assert next(lines).startswith('data: ')
    for _ in range(6):
      next(lines)
  deadline = time.time() + 60  # a bound for a broken server, not a speed check
  while get_json(serve_url + '/stats')['busy_slots'] and time.time() < deadline:
    time.sleep(0.05)
  stats = get_json(serve_url + '/stats')
  assert stats['busy_slots'] == 0
  assert stats['decode_steps'] - before < 200  # it stopped long before max_tokens
  after = httpx.post(serve_url + '/v1/chat/completions', json=chat_body('hi', max_tokens=4))
  assert after.status_code == 200 and after.json()['choices'][0]['message']['content']


def test_completions_stream_equals_whole(client):
  kwargs = dict(model='w', prompt='床前明月光，', max_tokens=12, temperature=0,
                extra_body={'ignore_eos': True})
  whole = client.completions.create(**kwargs).choices[0]
  chunks = list(client.completions.create(stream=True, echo=True, **kwargs))
  texts = [c.choices[0].text for c in chunks]
  assert texts[0] == '床前明月光，' and ''.join(texts[1:]) == whole.text
  assert chunks[-1].choices[0].finish_reason == 'length' == whole.finish_reason
  assert '\ufffd' not in ''.join(texts)
