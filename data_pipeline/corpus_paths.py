"""Which files `data.train_files`/`eval_files` name: files, folders (every file in
them, hidden ones left out) and globs (`data/*.parquet`, `gs://b/**/*.jsonl.zst`),
local or gs://, all through etils.epath. gs:// has no glob('**'), so patterns are
matched component by component with iterdir.
"""
import fnmatch
import re

from etils import epath

from configs.errors import UserError
from engine import paths as storage_paths

_GLOB_MAGIC = re.compile(r'[*?[]')


def _walk(directory):
  """Every file under a folder, sorted, hidden ones (.DS_Store, .git/, Spark's .crc)
  left out."""
  root = str(directory).rstrip('/')
  return [path for path in storage_paths.walk_files(root)
          if not any(part.startswith('.') for part in path[len(root):].split('/'))]


def _glob_parts(pattern):
  """(folder to start from, the path components to match below it)."""
  if pattern.startswith('gs://'):
    bucket, _, rest = pattern[len('gs://'):].partition('/')
    base, parts = f'gs://{bucket}', rest.split('/')
  elif pattern.startswith('/'):
    base, parts = '/', pattern[1:].split('/')
  else:
    base, parts = '.', pattern.split('/')
  parts = [p for p in parts if p not in ('', '.')]
  while parts and not _GLOB_MAGIC.search(parts[0]):
    base, parts = str(epath.Path(base) / parts[0]), parts[1:]
  return epath.Path(base), parts


def _matches(folder, parts):
  """Paths under `folder` matching the components (`**` = any number of folders)."""
  if not parts:
    yield folder
    return
  head, rest = parts[0], parts[1:]
  if not _GLOB_MAGIC.search(head):
    if (folder / head).exists():
      yield from _matches(folder / head, rest)
    return
  if not folder.is_dir():
    return
  if head == '**':
    yield from _matches(folder, rest)
  for child in folder.iterdir():
    if child.name.startswith('.') and not head.startswith('.'):
      continue  # like glob: hidden entries only by a pattern that names them
    if head == '**':
      if child.is_dir():
        yield from _matches(child, parts)
    elif fnmatch.fnmatchcase(child.name, head):
      yield from _matches(child, rest)


def _glob(pattern):
  found = []
  for match in sorted(set(_matches(*_glob_parts(pattern))), key=str):
    found += _walk(match) if match.is_dir() else [str(match)]
  return found


def expand_paths(paths, what='data.train_files'):
  """Files named directly, every file inside named directories (sorted), and the
  files a glob matches (sorted; a folder it matches counts as its files)."""
  expanded = []
  for entry in paths:
    for path in (p.strip() for p in str(entry).split(',')):
      if not path:
        continue
      as_path = epath.Path(path)
      if as_path.is_dir():
        expanded += _walk(as_path)
      elif as_path.exists():
        expanded.append(path)
      elif _GLOB_MAGIC.search(path):
        matched = _glob(path)
        if not matched:
          raise UserError(f'{what}: {path} matches no files; check the pattern (for example '
                          'data/*.parquet or gs://bucket/dir/*.jsonl.zst)')
        expanded += matched
      else:
        raise UserError(f'{what}: {path} does not exist; give existing text/JSONL/Parquet '
                        'files, directories or globs')
  if not expanded:
    raise UserError(f'{what} names no files; give text/JSONL/Parquet files or leave it empty '
                    'for the embedded corpus')
  return expanded
