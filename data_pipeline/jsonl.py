"""JSONL records with their `file:line`, and one error line for a line that is not an object."""
import json
import math

from absl import logging

from configs.errors import UserError
from engine import paths


def records(path, what):
  """Yields (where, record) for each non-blank line of `path`. Invalid UTF-8 is replaced
  by U+FFFD with one warning per file (as for pretraining text)."""
  if paths.isdir(path):
    raise UserError(f'{what} {path} is a directory, not a JSONL file; name the .jsonl files '
                    'inside it')
  if not paths.isfile(path):
    raise UserError(f'{what} {path} does not exist; give a JSONL file')
  warned = False
  with paths.epath.Path(path).open('rb') as raw:
    for number, data in enumerate(raw, 1):
      where = f'{path}:{number}'
      try:
        line = data.decode('utf-8')
      except UnicodeDecodeError:
        line = data.decode('utf-8', errors='replace')
        if not warned:
          logging.warning('%s is not valid UTF-8; invalid bytes were replaced by U+FFFD', where)
          warned = True
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f'{where} is not valid JSON ({e.msg}); give one JSON object per '
                        'line') from None
      if not isinstance(record, dict):
        raise UserError(f'{where} is not a JSON object; give one object per line')
      yield where, record


def finite_number(record, field, where, default):
  """record[field] as a float: absent/null gives `default`; a non-number or a value that
  is not finite is one error line."""
  value = record.get(field)
  if value is None:
    return default
  try:
    ok = not isinstance(value, bool) and math.isfinite(value)
  except (TypeError, OverflowError):  # a string, a list; an integer beyond float's range
    ok = False
  if not ok:
    raise UserError(f'{where}: "{field}" must be a finite number; got {value!r:.40}')
  return float(value)
