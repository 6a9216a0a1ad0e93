"""Opens corpus files as binary streams, local or gs://, decompressing on the fly.

Every file is opened through `etils.epath`, so the same code reads gs:// objects.
Compression is chosen by the last suffix (`x.jsonl.zst` is zstd-compressed JSONL);
a damaged or cut-short compressed file is one UserError naming it, never a
silently shorter corpus (zstandard's own stream reader stops quietly at a
truncated frame, hence the frame-by-frame reader below).
"""
import bz2
import gzip
import io
import lzma
import zlib

from etils import epath

from configs.errors import UserError

COMPRESSIONS = {'.gz': 'gzip', '.zst': 'zstd', '.zstd': 'zstd', '.bz2': 'bzip2', '.xz': 'xz'}
READ_BUFFER = 1 << 20  # bytes pulled from storage per read (plain and compressed alike)
_ZSTD_INPUT = 1 << 18  # compressed bytes fed to zstd at a time (bounds one output piece)


def compression_of(path):
  """('gzip'|'zstd'|'bzip2'|'xz' or None, the name without that suffix)."""
  name = str(path)
  for suffix, kind in COMPRESSIONS.items():
    if name.lower().endswith(suffix):
      return kind, name[:-len(suffix)]
  return None, name


def open_raw(path):
  """The file's bytes as stored (seekable): the one place corpus files are opened."""
  return epath.Path(path).open('rb')


class _ZstdReader(io.RawIOBase):
  """Decompresses every zstd frame of `raw` in turn; a file that ends inside a frame
  raises instead of ending early."""

  def __init__(self, raw):
    import zstandard
    self._raw = raw
    self._context = zstandard.ZstdDecompressor()
    self._frame = None
    self._out = memoryview(b'')

  def readable(self):
    return True

  def readinto(self, buffer):
    while not self._out:
      if self._frame is None or self._frame.eof:
        data = self._frame.unused_data if self._frame is not None else b''
        data = data or self._raw.read(_ZSTD_INPUT)
        if not data:
          return 0  # the stream ended between frames
        self._frame = self._context.decompressobj()
      else:
        data = self._raw.read(_ZSTD_INPUT)
        if not data:
          raise EOFError('compressed file ended before the end of a zstd frame')
      self._out = memoryview(self._frame.decompress(data))
    n = min(len(buffer), len(self._out))
    buffer[:n] = self._out[:n]
    self._out = self._out[n:]
    return n


def _errors():
  errors = (OSError, EOFError, zlib.error, lzma.LZMAError)
  try:
    import zstandard
    return errors + (zstandard.ZstdError,)
  except ImportError:
    return errors


class _Checked(io.RawIOBase):
  """Turns a decompression error into one UserError naming the file."""

  def __init__(self, stream, path, kind):
    self._stream, self._path, self._kind = stream, path, kind
    self._catch = _errors()

  def readable(self):
    return True

  def readinto(self, buffer):
    try:
      return self._stream.readinto(buffer)
    except self._catch as e:
      raise UserError(f'{self._path} is not a valid {self._kind} file ({e}); the file is '
                      'damaged or cut short: download it again or leave it out') from None

  def close(self):
    self._stream.close()
    super().close()


def open_stream(path):
  """A buffered binary stream of the file's decompressed bytes (plain files: the
  seekable raw file itself)."""
  kind, _ = compression_of(path)
  raw = open_raw(path)
  if kind is None:
    return raw
  if kind == 'gzip':
    stream = gzip.GzipFile(fileobj=raw, mode='rb')
  elif kind == 'bzip2':
    stream = bz2.BZ2File(raw, mode='rb')
  elif kind == 'xz':
    stream = lzma.LZMAFile(raw, mode='rb')
  else:
    try:
      stream = _ZstdReader(raw)
    except ImportError:
      raw.close()
      raise UserError(f'{path} is zstd-compressed and the zstandard package is not '
                      'installed; pip install zstandard') from None
  return _CloseBoth(io.BufferedReader(_Checked(stream, path, kind), READ_BUFFER), raw)


class _CloseBoth:
  """The decompressed stream, closing the stored file with it."""

  def __init__(self, stream, raw):
    self._stream, self._raw = stream, raw

  def __getattr__(self, name):
    return getattr(self._stream, name)

  def __iter__(self):
    return iter(self._stream)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    self._stream.close()
    self._raw.close()
