"""Every bad request gets a 4xx OpenAI-shaped error naming the problem, and the
server goes on serving."""
import httpx
import pytest

from tests.cli_helpers import one_line_error
from tests.cli_helpers import run_cli
from tests.serve_helpers import chat_body

pytestmark = pytest.mark.slow
USER = [{'role': 'user', 'content': 'hi'}]

BAD = [  # (path, body, status, fragment of the message, param)
    ('/v1/chat/completions', {'messages': []}, 400, 'non-empty list', 'messages'),
    ('/v1/chat/completions', {}, 400, 'non-empty list', 'messages'),
    ('/v1/chat/completions', {'messages': [{'role': 'robot', 'content': 'x'}]}, 400,
     "unknown role 'robot'", 'messages'),
    ('/v1/chat/completions', {'messages': [{'role': 'user', 'content': 3}]}, 400,
     'must be a string', 'messages'),
    ('/v1/chat/completions', {'messages': USER, 'temperature': 'hot'}, 400,
     '"temperature" must be a number', 'temperature'),
    ('/v1/chat/completions', {'messages': USER, 'temperature': 5}, 400, 'out of range',
     'temperature'),
    ('/v1/chat/completions', {'messages': USER, 'top_p': 0}, 400, 'out of range', 'top_p'),
    ('/v1/chat/completions', {'messages': USER, 'n': 1000}, 400, 'between 1 and 16', 'n'),
    ('/v1/chat/completions', {'messages': USER, 'max_tokens': 0}, 400, '>= 1', 'max_tokens'),
    ('/v1/chat/completions', {'messages': USER, 'max_tokens': 10000}, 400,
     'maximum context length is 256 tokens', 'max_tokens'),
    ('/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'word ' * 300}]}, 400,
     'maximum context length is 256 tokens', 'prompt'),
    ('/v1/chat/completions', {'messages': USER, 'stop': [1, 2]}, 400, '"stop"', 'stop'),
    ('/v1/chat/completions', {'messages': USER, 'stream': 'yes'}, 400, 'true or false',
     'stream'),
    ('/v1/completions', {'prompt': []}, 400, '"prompt" must be', 'prompt'),
    ('/v1/completions', {'prompt': [1, 'a']}, 400, '"prompt" must be', 'prompt'),
    ('/v1/completions', {'prompt': [[5, 99999]]}, 400, 'not in [0, 2048)', 'prompt'),
    ('/v1/completions', {'prompt': [-1]}, 400, 'not in [0, 2048)', 'prompt'),
    ('/v1/completions', {'prompt': 'x', 'logprobs': 5}, 400, 'between 0 and 1', 'logprobs'),
    ('/v1/completions', {'prompt': 'x', 'max_tokens': 0}, 400, 'only makes sense with',
     'max_tokens'),
    ('/v1/completions', {'prompt': [7] * 256, 'max_tokens': 1}, 400,
     'maximum context length is 256 tokens', 'prompt'),
    ('/tokenize', {'tokens': [1]}, 400, 'give "prompt"', 'prompt'),
    ('/detokenize', {'tokens': 'abc'}, 400, '"tokens" must be a list', 'tokens'),
]


@pytest.mark.parametrize('path,body,status,fragment,param', BAD)
def test_bad_request_is_a_4xx_openai_error(serve_url, path, body, status, fragment, param):
  response = httpx.post(serve_url + path, json=body)
  assert response.status_code == status, response.text
  error = response.json()['error']
  assert set(error) == {'message', 'type', 'param', 'code'}
  assert fragment in error['message'] and error['param'] == param, error
  assert error['type'] == 'invalid_request_error'


def test_malformed_bodies_and_unknown_routes_then_it_still_serves(serve_url):
  for content in (b'{not json', b'[1, 2]', b'', '"\xff"'.encode('latin-1')):
    response = httpx.post(serve_url + '/v1/chat/completions', content=content,
                          headers={'content-type': 'application/json'})
    assert response.status_code == 400 and 'error' in response.json(), response.text
  missing = httpx.get(serve_url + '/v1/nothing')
  assert missing.status_code == 404 and missing.json()['error']['type'] == 'not_found_error'
  wrong_method = httpx.get(serve_url + '/v1/chat/completions')
  assert wrong_method.status_code == 405 and 'error' in wrong_method.json()
  # unknown fields are ignored; a stream that ends at a stop string still ends cleanly
  ok = httpx.post(serve_url + '/v1/chat/completions',
                  json=chat_body('hi', max_tokens=4, frequency_penalty=0.5, user='me'))
  assert ok.status_code == 200 and ok.json()['choices'][0]['message']['role'] == 'assistant'
  assert httpx.get(serve_url + '/health').status_code == 200


def test_stop_strings_end_the_answer_before_them(serve_url):
  whole = httpx.post(serve_url + '/v1/chat/completions',
                     json=chat_body('Hello', max_tokens=24, ignore_eos=True)).json()
  text = whole['choices'][0]['message']['content']
  assert len(text) > 4
  stop = text[2:4]
  cut = httpx.post(serve_url + '/v1/chat/completions',
                   json=chat_body('Hello', max_tokens=24, ignore_eos=True, stop=stop)).json()
  assert cut['choices'][0]['message']['content'] == text[:text.find(stop)]
  assert cut['choices'][0]['finish_reason'] == 'stop'


def test_bad_command_lines_are_one_error_line(serve_url, served_workdir, tiny_workdir):
  port = serve_url.rsplit(':', 1)[1]  # taken by the running server
  one_line_error(run_cli('serve', f'--workdir={served_workdir}', f'--port={port}'),
                 'cannot listen on 127.0.0.1:' + port)
  one_line_error(run_cli('serve', f'--workdir={tiny_workdir}', '--port=70000'), '--port=70000')
  one_line_error(run_cli('serve', f'--workdir={tiny_workdir}', '--port=0'), '--port=0')
  one_line_error(run_cli('chat', f'--workdir={tiny_workdir}', '--temperature=5'),
                 '--temperature=5')
  one_line_error(run_cli('chat', f'--workdir={tiny_workdir}'), 'no checkpoint in')
  one_line_error(run_cli('serve', f'--workdir={served_workdir}', '--port=9',
                         '--config.serve.max_batch=0'), 'serve.max_batch')
