"""Reads documents from text and JSONL files.

Text files: one document per blank-line-separated block (or per file).
JSONL files: one document per line, from a string field (default "text").
Invalid UTF-8 is replaced by U+FFFD with a warning naming the file,
because scraped corpora often hold a few stray bytes and refusing the whole run
for them helps nobody; the byte-fallback tokenizer can represent U+FFFD.
"""
import json
import os
import re

from absl import logging

from configs.errors import UserError

JSONL_EXTENSIONS = ('.jsonl', '.json', '.ndjson')
BLANK_LINES = re.compile(r'\n\s*\n')


def expand_paths(paths, what='data.train_files'):
  """Files named directly, plus every file inside named directories (sorted)."""
  expanded = []
  for entry in paths:
    for path in (p.strip() for p in str(entry).split(',')):
      if not path:
        continue
      if os.path.isdir(path):
        expanded += sorted(os.path.join(root, name)
                           for root, _, names in os.walk(path) for name in names)
      elif os.path.isfile(path):
        expanded.append(path)
      else:
        raise UserError(f'{what}: {path} does not exist; give existing text/JSONL files or '
                        'directories')
  if not expanded:
    raise UserError(f'{what} names no files; give text/JSONL files or leave it empty for '
                    'the embedded corpus')
  return expanded


def _file_format(path, text_format):
  if text_format != 'auto':
    return text_format
  return 'jsonl' if path.lower().endswith(JSONL_EXTENSIONS) else 'text'


def _read_text(path):
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    return raw.decode('utf-8'), False
  except UnicodeDecodeError:
    return raw.decode('utf-8', errors='replace'), True


def read_documents(path, text_format='auto', text_field='text', text_split='blank_line'):
  """Yields the non-empty documents of one file as str."""
  text, had_bad_bytes = _read_text(path)
  if had_bad_bytes:
    logging.warning('%s is not valid UTF-8; invalid bytes were replaced by U+FFFD', path)
  if _file_format(path, text_format) == 'jsonl':
    for line_number, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f'{path}:{line_number} is not valid JSON ({e.msg}); fix the line or '
                        'set data.text_format=text') from None
      value = record.get(text_field) if isinstance(record, dict) else None
      if not isinstance(value, str):
        raise UserError(f'{path}:{line_number} has no string field "{text_field}"; set '
                        'data.text_field to the key that holds the text')
      if value.strip():
        yield value
  elif text_split == 'file':
    if text.strip():
      yield text
  else:
    for block in BLANK_LINES.split(text):
      if block.strip():
        yield block.strip('\n')


def iter_documents(paths, data_config, what='data.train_files'):
  """All documents of all files; a corpus without any is a UserError."""
  count = 0
  for path in expand_paths(paths, what):
    for doc in read_documents(path, data_config.text_format, data_config.text_field,
                              data_config.text_split):
      count += 1
      yield doc
  if count == 0:
    raise UserError(f'{what} holds no documents (all files are empty); give files with text')
