"""JSONL records with their `file:line`, and one error line for a line that is not an object."""
import io
import json

from configs.errors import UserError
from engine import paths


def records(path, what):
  """Yields (where, record) for each non-blank line of `path`."""
  if not paths.isfile(path):
    raise UserError(f'{what} {path} does not exist; give a JSONL file')
  with paths.epath.Path(path).open('rb') as raw:
    f = io.TextIOWrapper(raw, encoding='utf-8', errors='replace')
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{path}:{number}'
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f'{where} is not valid JSON ({e.msg}); give one JSON object per '
                        'line') from None
      if not isinstance(record, dict):
        raise UserError(f'{where} is not a JSON object; give one object per line')
      yield where, record
