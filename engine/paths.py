"""One path layer for every file the project reads or writes: local paths and gs://.

Paths stay strings everywhere (`os.path.join('gs://b/run', 'x')` is 'gs://b/run/x');
what touches storage goes through here, on etils.epath (gcsfs under gs://), because
`open`/`os.makedirs` on a gs:// string silently write a local folder named `gs:`.

Object storage has no directories, no append and no atomic rename of a folder; a
single object write is atomic (readers see the old object or the new one), so
`write_atomic` is a plain write there and a temp-file rename locally.
"""
import os
import re
import shutil
import tempfile

from etils import epath

from configs.errors import UserError

_SCHEME = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')
_BUCKET = re.compile(r'^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$')


def is_remote(path):
  return str(path).startswith('gs://')


def resolve(path, what='--workdir'):
  """An absolute local path, or the gs:// URL as given (without a trailing /).
  Any other scheme is one error line: Orbax writes checkpoints to gs:// and local
  paths only (it refuses s3://)."""
  text = str(path).strip()
  match = _SCHEME.match(text)
  if match is None:
    return os.path.abspath(text)
  if match.group(1) != 'gs':
    raise UserError(f'{what}={text}: {match.group(1)}:// is not supported; give a local path '
                    'or a gs://bucket/path (or mount the store as a local folder)')
  bucket = text[len('gs://'):].split('/', 1)[0]
  if not _BUCKET.match(bucket):  # TensorStore (Orbax's arrays) refuses such a name mid-save
    raise UserError(f'{what}={text}: {bucket!r} is not a valid GCS bucket name (3-63 '
                    'characters: lowercase letters, digits, -, _ and .); give gs://BUCKET/path')
  return text.rstrip('/')


def bucket_of(path):
  return str(path)[len('gs://'):].split('/', 1)[0]


def gcs():
  """The gcsfs file system epath uses (one per process, cached by fsspec)."""
  import fsspec  # only with gs://: local runs never import gcsfs
  return fsspec.filesystem('gcs', finalize_on_close=True)


def require_bucket(path, what='--workdir'):
  """An unknown bucket is one line before any work (gcsfs would otherwise create it,
  or fail at the first write with an HTTP error)."""
  if not is_remote(path):
    return
  bucket = bucket_of(path)
  if not exists(f'gs://{bucket}'):
    raise UserError(f'{what}={path}: bucket gs://{bucket} does not exist or is not readable '
                    'with these credentials; create it (gcloud storage buckets create '
                    f'gs://{bucket}) or fix the name')


def exists(path):
  return epath.Path(path).exists()


def isdir(path):
  return epath.Path(path).is_dir()


def isfile(path):
  path = epath.Path(path)
  return path.exists() and not path.is_dir()


def listdir(path):
  """Names in a folder (empty when it does not exist), like os.listdir."""
  path = epath.Path(path)
  if not path.is_dir():
    return []
  return [child.name for child in path.iterdir()]


def makedirs(path):
  if not is_remote(path):  # object stores have no folders: they appear with their files
    os.makedirs(path, exist_ok=True)


def read_bytes(path):
  return epath.Path(path).read_bytes()


def read_text(path):
  return epath.Path(path).read_text(encoding='utf-8')


def write_atomic(path, data):
  """Writes a whole file so that readers see the old content or the new, never a
  part: a renamed temp file locally, one object write on gs://."""
  data = data.encode('utf-8') if isinstance(data, str) else data
  if is_remote(path):
    epath.Path(path).write_bytes(data)
    return
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def remove(path):
  epath.Path(path).unlink(missing_ok=True)


def rename(source, target):
  """Local: one atomic rename. gs://: copy then delete, object by object (a folder
  renamed this way is briefly in both places; callers rename only finished steps)."""
  if not is_remote(source):
    os.rename(source, target)
    return
  fs = gcs()
  if fs.isdir(source):
    fs.copy(source, target, recursive=True)
    fs.rm(source, recursive=True)
  else:
    fs.mv(source, target)
  fs.invalidate_cache()


def getsize(path):
  return epath.Path(path).stat().length


def getmtime(path):
  return epath.Path(path).stat().mtime


def walk_files(path):
  """Every file under a folder, as full paths, sorted (gs:// has no glob('**'))."""
  if is_remote(path):  # epath's walk drops the scheme on gs://
    fs = gcs()
    return sorted(f'gs://{key}' for key in fs.find(path) if not key.endswith('/'))
  return sorted(os.path.join(top, name) for top, _, names in os.walk(path) for name in names)


def folder_bytes(path):
  if is_remote(path):
    return sum(gcs().du(path, total=False).values()) if exists(path) else 0
  total = 0
  for top, _, names in os.walk(path):
    for name in names:
      try:
        total += os.lstat(os.path.join(top, name)).st_size
      except OSError:
        pass
  return total


def upload_tree(local_dir, target):
  """Copies a finished local folder to `target` (local or gs://), file by file; if one
  copy fails, the files already copied are removed (no half folder is left to be read)."""
  done = []
  try:
    for top, _, names in os.walk(local_dir):
      rel = os.path.relpath(top, local_dir)
      for name in sorted(names):
        dest = os.path.join(target, name) if rel == '.' else os.path.join(target, rel, name)
        if is_remote(dest):  # streamed: shards are up to data.prepare_shard_mb each
          with open(os.path.join(top, name), 'rb') as src, epath.Path(dest).open('wb') as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
        else:
          os.makedirs(os.path.dirname(dest), exist_ok=True)
          shutil.copyfile(os.path.join(top, name), dest)
        done.append(dest)
  except BaseException:
    for dest in done:
      try:
        remove(dest)
      except Exception:  # pylint: disable=broad-except  (the store may be what failed)
        pass
    raise


def download_tree(source, local_dir):
  """Copies every file under `source` (local or gs://) into a local folder."""
  for path in walk_files(source):
    dest = os.path.join(local_dir, os.path.relpath(path, source) if not is_remote(source)
                        else path[len(source.rstrip('/')) + 1:])
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, 'wb') as f:
      f.write(read_bytes(path))


def local_scratch(prefix):
  """A local temp folder for what must be built on a local disk before it is
  uploaded (array_record files, TensorBoard events)."""
  return tempfile.mkdtemp(prefix=prefix)
