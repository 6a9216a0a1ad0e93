"""Chat JSONL files in the formats TRL, OpenRLHF and MaxText users already have.

- `messages`: {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
- `prompt_completion`: {"prompt": str | messages, "completion": str | messages}
- `alpaca`: {"instruction": ..., "input": ... (optional), "output": ...}

The format is detected per file from its first record (`data.chat_format`
forces one); every record must then have that format's fields. Other keys
(`task`, `reference`, `lang`, ...) are kept beside the messages.
"""
from configs.errors import UserError
from data_pipeline import chat_template
from data_pipeline import jsonl

FORMATS = {
    'messages': ('messages',),
    'prompt_completion': ('prompt', 'completion'),
    'alpaca': ('instruction', 'output'),
}


def detect(record):
  for name, fields in FORMATS.items():
    if all(f in record for f in fields):
      return name
  return None


def _as_messages(value, role):
  return value if isinstance(value, list) else [{'role': role, 'content': value}]


def to_messages(record, fmt, where):
  """The record's conversation as a list of {"role", "content"}."""
  if fmt == 'messages':
    messages = record['messages']
  elif fmt == 'prompt_completion':
    messages = (_as_messages(record['prompt'], 'user')
                + _as_messages(record['completion'], 'assistant'))
  else:  # alpaca: the input, when present, follows the instruction after a blank line
    user = record['instruction'] + (f'\n\n{record["input"]}' if record.get('input') else '')
    messages = [{'role': 'user', 'content': user},
                {'role': 'assistant', 'content': record['output']}]
  chat_template.check_messages(messages, where)
  return messages


def read_chat_file(path, forced_format='auto'):
  """[{'messages': [...], **other fields}, ...] of one JSONL file."""
  records, fmt = [], None if forced_format == 'auto' else forced_format
  for where, record in jsonl.records(path, 'chat file'):
    fmt = fmt or detect(record)
    if fmt is None or not all(k in record for k in FORMATS[fmt]):
      known = '; '.join('/'.join(fields) for fields in FORMATS.values())
      raise UserError(f'{where} has none of the known chat fields ({known}); convert it or '
                      'set data.chat_format')
    messages = to_messages(record, fmt, where)
    extra = {k: v for k, v in record.items() if k not in FORMATS[fmt]}
    records.append({**extra, 'messages': messages})
  return records


def read_chat_files(paths, forced_format='auto'):
  records = []
  for path in paths:
    records += read_chat_file(path, forced_format)
  return records
