"""Checks of OpenAI-shaped request bodies. Each bad field is an ApiError that the
HTTP layer answers as {"error": {"message", "type", "param", "code"}} with status
400; fields we do not know are ignored (as the OpenAI API and vLLM do)."""
import math

from data_pipeline import chat_template


class ApiError(Exception):
  def __init__(self, message, param=None, status=400, kind='invalid_request_error',
               code=None):
    super().__init__(message)
    self.message, self.param, self.status, self.kind, self.code = (
        message, param, status, kind, code)

  def body(self):
    return {'error': {'message': self.message, 'type': self.kind, 'param': self.param,
                      'code': self.code}}


def _type(value):
  return 'null' if value is None else type(value).__name__


def number(body, name, default, low, high, low_open=False):
  value = body.get(name, default)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ApiError(f'"{name}" must be a number; got {value!r:.40}', name)
  if value < low or (low_open and value == low) or value > high:
    side = '(' if low_open else '['
    raise ApiError(f'"{name}"={value} is out of range; use a value in {side}{low}, {high}]', name)
  return float(value)


def integer(body, name, default, low, high=None):
  value = body.get(name, default)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, int):
    raise ApiError(f'"{name}" must be an integer; got {_type(value)} {value!r:.40}', name)
  if value < low or (high is not None and value > high):
    limit = f'between {low} and {high}' if high is not None else f'>= {low}'
    raise ApiError(f'"{name}"={value} must be {limit}', name)
  return value


def boolean(body, name, default=False):
  value = body.get(name, default)
  if value is None:
    return default
  if not isinstance(value, bool):
    raise ApiError(f'"{name}" must be true or false; got {value!r:.40}', name)
  return value


def stop_strings(body):
  value = body.get('stop')
  if value is None:
    return []
  if isinstance(value, str):
    return [value]
  if (not isinstance(value, list) or len(value) > 4
      or not all(isinstance(s, str) for s in value)):
    raise ApiError('"stop" must be a string or a list of at most 4 strings', 'stop')
  return value


def sampling(body, max_n):
  """The sampling fields chat and completions share."""
  return {'temperature': number(body, 'temperature', 1.0, 0.0, 2.0),
          'top_p': number(body, 'top_p', 1.0, 0.0, 1.0, low_open=True),
          'seed': integer(body, 'seed', None, 0),
          'n': integer(body, 'n', 1, 1, max_n),
          'stop': stop_strings(body),
          'stream': boolean(body, 'stream')}


def _content(message, number_):
  """A message's text: a string, or OpenAI's list of {"type": "text", "text"} parts."""
  content = message.get('content')
  if isinstance(content, list):
    if not all(isinstance(p, dict) and p.get('type') == 'text' and isinstance(p.get('text'), str)
               for p in content):
      raise ApiError(f'message {number_}: only text content parts are supported',
                     'messages')
    return ''.join(p['text'] for p in content)
  if not isinstance(content, str):
    raise ApiError(f'message {number_}: "content" must be a string; got {_type(content)}',
                   'messages')
  return content


def messages(body):
  value = body.get('messages')
  if not isinstance(value, list) or not value:
    raise ApiError('"messages" must be a non-empty list of {"role", "content"} objects',
                   'messages')
  out = []
  for number_, message in enumerate(value, 1):
    if not isinstance(message, dict) or 'role' not in message:
      raise ApiError(f'message {number_} needs a "role" and a "content"', 'messages')
    if message['role'] not in chat_template.ROLES:
      raise ApiError(f'message {number_} has unknown role {message["role"]!r:.40}; use one of '
                     f'{", ".join(chat_template.ROLES)}', 'messages')
    out.append({'role': message['role'], 'content': _content(message, number_)})
  return out


def prompts(body, vocab_size):
  """'prompt' as a list of (text or None, token ids or None): a string, a list of
  strings, a list of token ids, or a list of token-id lists."""
  value = body.get('prompt')
  def ids(seq):
    if not seq:
      raise ApiError('a token-id prompt must not be empty', 'prompt')
    bad = [t for t in seq if isinstance(t, bool) or not isinstance(t, int)
           or not 0 <= t < vocab_size]
    if bad:
      raise ApiError(f'token id {bad[0]!r:.20} is not in [0, {vocab_size}) (the vocabulary)',
                     'prompt')
    return (None, list(seq))
  if isinstance(value, str):
    return [(value, None)]
  if isinstance(value, list) and value:
    if all(isinstance(p, str) for p in value):
      return [(p, None) for p in value]
    if all(isinstance(p, list) for p in value):
      return [ids(p) for p in value]
    if all(isinstance(p, int) and not isinstance(p, bool) for p in value):
      return [ids(value)]
  raise ApiError('"prompt" must be a string, a list of strings, a list of token ids or a '
                 'list of token-id lists (non-empty)', 'prompt')


def check_room(prompt_len, max_tokens, room_for, max_len):
  """A prompt plus max_tokens must fit the context; name the limit."""
  room = room_for(prompt_len)
  if room < max(max_tokens, 0) or room < 0:
    raise ApiError(f"This model's maximum context length is {max_len} tokens. However, you "
                   f'requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, '
                   f'{max_tokens} for the completion). Please reduce the length of the prompt '
                   'or max_tokens.', 'max_tokens' if prompt_len < max_len else 'prompt',
                   code='context_length_exceeded')
