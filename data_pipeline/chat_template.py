"""The one chat template of every stage, of `generate --chat` and of the HF export.

    BOS <|system|>…<|end_of_turn|> <|user|>…<|end_of_turn|> <|assistant|>…<|end_of_turn|> …

Role markers and end-of-turn are SentencePiece control tokens: text can never
encode to them, so a user cannot forge a turn. Each message's content is
encoded on its own (that is also how Hugging Face tokenizers split a string at
special tokens). The loss mask marks every token of an assistant reply *and*
its end-of-turn, so a model learns to stop; role markers are never trained on.
"""
import numpy as np

from configs.errors import UserError

ROLES = ('system', 'user', 'assistant')
END_OF_TURN = '<|end_of_turn|>'

# The same template in Jinja, written by `export` into tokenizer_config.json;
# tests check that transformers' apply_chat_template gives exactly our ids.
JINJA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end_of_turn|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def role_token(role):
  return f'<|{role}|>'


def _type_name(value):
  return 'null' if value is None else type(value).__name__


def check_messages(messages, where, field='messages'):
  """`field` of the record at `where` must be a non-empty list of {"role", "content"}."""
  if not isinstance(messages, list) or not messages:
    raise UserError(f'{where}: "{field}" must be a non-empty list of {{"role", "content"}} '
                    f'messages; got {_type_name(messages) if messages != [] else "[]"}')
  for number, message in enumerate(messages, 1):
    if not isinstance(message, dict) or 'role' not in message or 'content' not in message:
      raise UserError(f'{where}: every message needs "role" and "content" (message {number} '
                      f'of "{field}" is {message!r:.80})')
    if not isinstance(message['role'], str) or message['role'] not in ROLES:
      raise UserError(f'{where}: unknown role {message["role"]!r}; use one of '
                      f'{", ".join(ROLES)} (in "{field}")')
    if not isinstance(message['content'], str):
      raise UserError(f'{where}: message content must be a string ("{field}" message {number} '
                      f'holds {_type_name(message["content"])}); quote it as text')


def as_messages(value, role, where, field):
  """A field that holds a string (one `role` message) or a message list, as messages;
  anything else is one error line naming the field."""
  if isinstance(value, str):
    return [{'role': role, 'content': value}]
  if not isinstance(value, list):
    raise UserError(f'{where}: "{field}" must be a string or a list of {{"role", "content"}} '
                    f'messages; got {_type_name(value)}')
  check_messages(value, where, field)
  return value


def check_string(record, field, where, required=True):
  """record[field] is a string (or absent/null when not `required`)."""
  value = record.get(field)
  if value is None and not required:
    return
  if not isinstance(value, str):
    raise UserError(f'{where}: "{field}" must be a string; got {_type_name(value)}')


def encode(tokenizer, messages, add_generation_prompt=False):
  """(ids, mask) as int32 arrays: mask[i] = 1 where ids[i] is an assistant token
  (content or its end-of-turn) that training should predict."""
  ids, mask = [tokenizer.bos_id], [0]
  end = tokenizer.chat_ids[END_OF_TURN]
  for message in messages:
    content = tokenizer.encode(message['content'])
    trained = 1 if message['role'] == 'assistant' else 0
    ids += [tokenizer.chat_ids[role_token(message['role'])]] + content + [end]
    mask += [0] + [trained] * (len(content) + 1)
  if add_generation_prompt:
    ids.append(tokenizer.chat_ids[role_token('assistant')])
    mask.append(0)
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def prompt_ids(tokenizer, prompt, system=None):
  """Ids that ask the model for an assistant reply to `prompt` (a string or messages)."""
  messages = ([{'role': 'system', 'content': system}] if system else [])
  messages += prompt if isinstance(prompt, list) else [{'role': 'user', 'content': prompt}]
  return encode(tokenizer, messages, add_generation_prompt=True)[0]
