"""`prepare`'s parallel part: the input cut into work units, each written by one
process as one array_record shard.

A unit is a run of consecutive pieces: whole files, byte ranges of big plain
text/JSONL files (cut at any byte: a range owns the documents starting in it),
Parquet row groups. Compressed files cannot be entered in the middle, so each is
one piece. Units depend only on the input and `data.prepare_shard_mb`, never on
the number of workers, and the shards are concatenated in unit order: any
`data.prepare_workers` writes the same records to the same files.

Records are what TFDS writes for FeaturesDict({field: Text()}): a serialized
tf.train.Example holding the UTF-8 bytes (built by hand here, so workers need
neither TFDS nor TensorFlow; tests check it equals TFDS's own serializer).
"""
import gc
import multiprocessing
import os

from data_pipeline import corpus_streams
from data_pipeline import documents
from data_pipeline import parquet_documents

# Compressed files are planned at this multiple of their stored size (text and JSONL
# compress 3-5x with gzip/zstd), so a unit of them holds about as much text as others.
COMPRESSED_SIZE_FACTOR = 4
ARRAY_RECORD_OPTIONS = 'group_size:1'  # what TFDS writes: one record per chunk, random access


def _varint(n):
  out = bytearray()
  while n > 0x7f:
    out.append((n & 0x7f) | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def encode_record(text, field='text'):
  """tf.train.Example{features{feature{key: field, value{bytes_list{value: [text]}}}}}."""
  value = text.encode('utf-8')
  key = field.encode('utf-8')
  bytes_list_len = 1 + len(_varint(len(value))) + len(value)
  feature_len = 1 + len(_varint(bytes_list_len)) + bytes_list_len
  entry_len = (1 + len(_varint(len(key))) + len(key) +
               1 + len(_varint(feature_len)) + feature_len)
  features_len = 1 + len(_varint(entry_len)) + entry_len
  return b''.join((b'\n', _varint(features_len), b'\n', _varint(entry_len),
                   b'\n', _varint(len(key)), key, b'\x12', _varint(feature_len),
                   b'\n', _varint(bytes_list_len), b'\n', _varint(len(value)), value))


def _pieces(path, size, settings, shard_bytes):
  """[(path, start, end, planned bytes)] of one file."""
  fmt = documents.file_format(path, settings['text_format'])
  if fmt == 'parquet':
    groups = parquet_documents.row_groups(path, settings['text_field'])
    return [(path, g, g + 1, nbytes) for g, (_, nbytes) in enumerate(groups)]
  if documents.splittable(path, settings['text_format'], settings['text_split']):
    count = max(1, -(-size // shard_bytes))
    bounds = [size * k // count for k in range(count + 1)]
    return [(path, bounds[k], bounds[k + 1] if k + 1 < count else None,
             bounds[k + 1] - bounds[k]) for k in range(count)]
  compressed = corpus_streams.compression_of(path)[0] is not None
  return [(path, 0, None, size * (COMPRESSED_SIZE_FACTOR if compressed else 1))]


def plan_units(files_and_sizes, settings, shard_bytes):
  """Consecutive pieces grouped into units of about `shard_bytes` (a piece is never
  cut further): [[(path, start, end), ...], ...]."""
  units, current, current_bytes = [], [], 0
  for path, size in files_and_sizes:
    for path_, start, end, nbytes in _pieces(path, size, settings, shard_bytes):
      if current and current_bytes + nbytes > shard_bytes:
        units.append(current)
        current, current_bytes = [], 0
      current.append((path_, start, end))
      current_bytes += nbytes
  if current:
    units.append(current)
  return units


def write_unit(job):
  """Writes one unit's documents to `job['out']`; returns its record count, bytes and
  the files that held invalid UTF-8 (the parent warns once per file). No file is left
  for a unit without documents."""
  from array_record.python import array_record_module
  settings = job['settings']
  invalid_utf8 = set()
  count = num_bytes = 0
  writer = array_record_module.ArrayRecordWriter(job['out'], ARRAY_RECORD_OPTIONS)
  try:
    for path, start, end in job['pieces']:
      for doc in documents.read_piece(path, start, end, settings['text_format'],
                                      settings['text_field'], settings['text_split'],
                                      warn=invalid_utf8.add):
        record = encode_record(doc, settings['text_field'])
        writer.write(record)
        count += 1
        num_bytes += len(record)
  finally:
    writer.close()
  if not count:
    os.remove(job['out'])
  return {'count': count, 'num_bytes': num_bytes, 'invalid_utf8': sorted(invalid_utf8)}


def run_jobs(jobs, workers):
  """write_unit over every job, in `workers` processes (1: this one); results in job
  order. Spawned, not forked: the parent has JAX's threads running."""
  workers = min(workers, len(jobs))
  if workers <= 1:
    return [write_unit(job) for job in jobs]
  failure = _pooled(jobs, workers)
  if isinstance(failure, list):
    return failure
  gc.collect()  # the pool's semaphores are released before the error ends the process:
  raise failure  # run.py exits with os._exit, and the tracker would warn after the error


def _pooled(jobs, workers):
  """The results, or the first failing unit's exception, detached from the pool."""
  pool = multiprocessing.get_context('spawn').Pool(workers)
  try:
    return list(pool.imap(write_unit, jobs, chunksize=1))
  except BaseException as e:  # pylint: disable=broad-except  (a SIGTERM's Stopped too)
    failure = e.with_traceback(None)
  finally:
    pool.terminate()
    pool.join()
  return failure
