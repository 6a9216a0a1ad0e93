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


# Kept beside the messages and read by the chat metrics: strings when present.
OPTIONAL_STRINGS = ('task', 'reference', 'lang')
KNOWN = '; '.join('/'.join(fields) for fields in FORMATS.values())


def to_messages(record, fmt, where):
  """The record's conversation as a list of {"role", "content"}; every field of the
  format is checked (a wrong type is one error line naming the field)."""
  if fmt == 'messages':
    messages = record['messages']
    chat_template.check_messages(messages, where)
  elif fmt == 'prompt_completion':
    messages = (chat_template.as_messages(record['prompt'], 'user', where, 'prompt')
                + chat_template.as_messages(record['completion'], 'assistant', where,
                                            'completion'))
  else:  # alpaca: the input, when present, follows the instruction after a blank line
    for field, required in (('instruction', True), ('input', False), ('output', True)):
      chat_template.check_string(record, field, where, required)
    user = record['instruction'] + (f'\n\n{record["input"]}' if record.get('input') else '')
    messages = [{'role': 'user', 'content': user},
                {'role': 'assistant', 'content': record['output']}]
  for field in OPTIONAL_STRINGS:
    chat_template.check_string(record, field, where, required=False)
  return messages


def _format_error(where, record, fmt, first, forced):
  """The line for a record without `fmt`'s fields: what it looks like and the fix."""
  other = detect(record)
  fields = '/'.join(FORMATS[fmt])
  if other is None:
    return (f'{where} has none of the known chat fields ({KNOWN}); convert it to one of these '
            'formats')
  if forced:
    return (f'{where} is in the {other} format ({"/".join(FORMATS[other])}), but '
            f'data.chat_format={fmt!r} asks for {fields}; set --config.data.chat_format=auto '
            f'(or ={other})')
  return (f'{where} is in the {other} format ({"/".join(FORMATS[other])}), but the file\'s '
          f'first record ({first}) is {fmt} ({fields}); one format per file: convert it or '
          'move it to a file of its own')


def read_chat_file(path, forced_format='auto'):
  """[{'messages': [...], **other fields}, ...] of one JSONL file."""
  forced = forced_format != 'auto'
  records, fmt, first = [], forced_format if forced else None, None
  for where, record in jsonl.records(path, 'chat file'):
    fmt = fmt or detect(record)
    first = first or where
    if fmt is None or not all(k in record for k in FORMATS[fmt]):
      raise UserError(_format_error(where, record, fmt or 'messages', first, forced))
    messages = to_messages(record, fmt, where)
    extra = {k: v for k, v in record.items() if k not in FORMATS[fmt]}
    records.append({**extra, 'messages': messages})
  if not records:
    raise UserError(f'chat file {path} holds no conversation (it is empty or blank); give '
                    'one JSON object per line')
  return records


def read_chat_files(paths, forced_format='auto'):
  records = []
  for path in paths:
    records += read_chat_file(path, forced_format)
  return records
