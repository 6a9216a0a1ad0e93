"""Every input format reads the same documents as plain JSONL; files are streamed;
damaged inputs are one UserError naming the file."""
import bz2
import gzip
import io
import json
import lzma
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from configs import base
from configs.errors import UserError
from data_pipeline import corpus_streams
from data_pipeline import documents
from data_pipeline import parquet_documents
from data_pipeline import prepare_shards

WORDS = ['the', 'model', 'reads', 'text', '中文', 'données', 'ß', 'tokens', 'a', 'é\u00e8']


def make_docs(count, seed=0, max_lines=3):
  """Documents a text file can hold too: no blank or whitespace-only lines."""
  rng = random.Random(seed)
  return ['\n'.join(' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
                    for _ in range(rng.randint(1, max_lines))) for _ in range(count)]


def jsonl_bytes(docs, field='text'):
  return ''.join(json.dumps({field: d, 'id': i}, ensure_ascii=False) + '\n'
                 for i, d in enumerate(docs)).encode()


def text_bytes(docs):
  return '\n\n'.join(docs).encode() + b'\n'


def write_parquet(path, docs, rows_per_group, field='text'):
  table = pa.table({'id': list(range(len(docs))), field: docs})
  pq.write_table(table, path, row_group_size=rows_per_group)


COMPRESS = {'gz': gzip.compress, 'bz2': bz2.compress,
            'xz': lambda data: lzma.compress(data, preset=0),
            'zst': lambda data: zstandard.ZstdCompressor().compress(data)}


def write_all_formats(folder, docs):
  """{name: path} of the same documents in every format."""
  paths = {'jsonl': folder / 'docs.jsonl', 'txt': folder / 'docs.txt',
           'parquet': folder / 'docs.parquet'}
  paths['jsonl'].write_bytes(jsonl_bytes(docs))
  paths['txt'].write_bytes(text_bytes(docs))
  write_parquet(paths['parquet'], docs, rows_per_group=7)
  for suffix, compress in COMPRESS.items():
    for inner in ('jsonl', 'txt'):
      paths[f'{inner}.{suffix}'] = folder / f'docs.{inner}.{suffix}'
      paths[f'{inner}.{suffix}'].write_bytes(compress(paths[inner].read_bytes()))
  # zstd with several frames, as `zstd` writes long inputs and `cat a.zst b.zst` makes
  data = paths['jsonl'].read_bytes()
  half = data.index(b'\n', len(data) // 2) + 1
  paths['jsonl.zst_frames'] = folder / 'frames.jsonl.zst'
  paths['jsonl.zst_frames'].write_bytes(COMPRESS['zst'](data[:half]) + COMPRESS['zst'](data[half:]))
  return paths


@pytest.fixture
def data_config():
  return base.get_config().data


def test_every_format_reads_the_documents_of_plain_jsonl(tmp_path):
  docs = make_docs(60)
  paths = write_all_formats(tmp_path, docs)
  reference = list(documents.read_documents(str(paths['jsonl'])))
  assert reference == docs
  for name, path in paths.items():
    assert list(documents.read_documents(str(path))) == reference, name
  assert documents.file_format('x.jsonl.zst') == 'jsonl'
  assert documents.file_format('x.TXT.gz') == 'text'
  assert documents.file_format('x.parquet', 'jsonl') == 'parquet'


def test_parquet_text_field_and_row_group_ranges(tmp_path):
  docs = make_docs(50, seed=1)
  path = str(tmp_path / 'c.parquet')
  write_parquet(path, docs, rows_per_group=8, field='content')
  assert list(documents.read_documents(path, text_field='content')) == docs
  assert [n for n, _ in parquet_documents.row_groups(path, 'content')] == [8] * 6 + [2]
  pieces = [doc for g in range(7) for doc in documents.read_piece(path, g, g + 1,
                                                                  text_field='content')]
  assert pieces == docs


def test_directories_and_globs(tmp_path, data_config):
  docs = make_docs(30, seed=2)
  (tmp_path / 'd' / 'sub').mkdir(parents=True)
  write_parquet(tmp_path / 'd' / 'b.parquet', docs[10:20], rows_per_group=3)
  (tmp_path / 'd' / 'a.jsonl.gz').write_bytes(gzip.compress(jsonl_bytes(docs[:10])))
  (tmp_path / 'd' / 'sub' / 'c.txt').write_bytes(text_bytes(docs[20:]))
  (tmp_path / 'd' / '.hidden.parquet').write_bytes(b'not parquet')
  assert list(documents.iter_documents([str(tmp_path / 'd')], data_config)) == docs
  assert documents.expand_paths([str(tmp_path / 'd' / '*.parquet')]) == [
      str(tmp_path / 'd' / 'b.parquet')]  # hidden files need a pattern that names them
  assert documents.expand_paths([str(tmp_path / 'd' / '**' / '*.txt')]) == [
      str(tmp_path / 'd' / 'sub' / 'c.txt')]
  both = f'{tmp_path}/d/*.jsonl.gz,{tmp_path}/d/[b]*'
  assert list(documents.iter_documents([both], data_config)) == docs[:20]
  with pytest.raises(UserError, match=r'\*\.zst matches no files'):
    documents.expand_paths([str(tmp_path / 'd' / '*.zst')])


class CountingFile(io.RawIOBase):
  """A stored file that counts the bytes taken from it."""
  opened = []

  def __init__(self, f):
    self._f, self.bytes_read, self.largest_read = f, 0, 0
    CountingFile.opened.append(self)

  def readable(self):
    return True

  def seekable(self):
    return True

  def seek(self, offset, whence=0):
    return self._f.seek(offset, whence)

  def tell(self):
    return self._f.tell()

  def readinto(self, buffer):
    n = self._f.readinto(buffer)
    self.bytes_read += n
    self.largest_read = max(self.largest_read, n)
    return n

  def close(self):
    self._f.close()
    super().close()


def write_format(folder, docs, name):
  inner, _, suffix = name.partition('.')
  path = folder / f'docs.{name}'
  if inner == 'parquet':
    write_parquet(path, docs, rows_per_group=500)
    return path
  data = jsonl_bytes(docs) if inner == 'jsonl' else text_bytes(docs)
  path.write_bytes(COMPRESS[suffix](data) if suffix else data)
  return path


@pytest.mark.parametrize('name', ['jsonl', 'txt', 'jsonl.gz', 'jsonl.zst', 'txt.bz2',
                                  'jsonl.xz', 'parquet'])
def test_files_are_streamed_not_read_whole(tmp_path, monkeypatch, name):
  rng = random.Random(3)
  letters = 'abcdefghijklmnopqrstuvwxyz'
  docs = [' '.join(''.join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(40))
          for _ in range(20000)]  # ~5 MB that compresses only ~2x: bigger than the buffers
  path = write_format(tmp_path, docs, name)
  original = corpus_streams.open_raw
  CountingFile.opened = []
  monkeypatch.setattr(corpus_streams, 'open_raw',
                      lambda p: io.BufferedReader(CountingFile(original(p)), 1 << 16))
  size = path.stat().st_size
  assert size > 2 * corpus_streams.READ_BUFFER
  reader = documents.read_documents(str(path))
  assert next(reader) == docs[0]
  first = sum(f.bytes_read for f in CountingFile.opened)
  assert first <= corpus_streams.READ_BUFFER + (1 << 17), (first, size)
  assert list(reader) == docs[1:]
  assert sum(f.bytes_read for f in CountingFile.opened) >= size * 0.9  # then the rest
  assert max(f.largest_read for f in CountingFile.opened) <= corpus_streams.READ_BUFFER


def blank_line_split(text):
  """The text-file rule as it was first written (whole file, one regex)."""
  return [b.strip('\n') for b in re.split(r'\n\s*\n', text) if b.strip()]


def test_text_blocks_equal_the_regex_split_and_ranges_cut_anywhere(tmp_path):
  rng = random.Random(4)
  alphabet = ['a', 'b', ' ', '\n', '\n', '\n', '\t', '\r', '\u3000', '\x0c', '中', '\x85']
  path = tmp_path / 't.txt'
  for _ in range(300):
    text = ''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
    path.write_bytes(text.encode())
    expected = blank_line_split(text)
    assert list(documents.read_documents(str(path))) == expected, repr(text)
    size = len(text.encode())
    for cut in range(size + 1):  # any cut point: each block read exactly once
      halves = (list(documents.read_piece(str(path), 0, cut)) +
                list(documents.read_piece(str(path), cut, None)))
      assert halves == expected, (repr(text), cut)


def test_jsonl_ranges_cut_anywhere_and_errors_name_the_line(tmp_path):
  docs = make_docs(12, seed=5)
  path = tmp_path / 'x.jsonl'
  data = jsonl_bytes(docs).replace(b'\n', b'\r\n', 3) + b'\n  \n'
  path.write_bytes(data)
  for cut in range(len(data) + 1):
    assert (list(documents.read_piece(str(path), 0, cut)) +
            list(documents.read_piece(str(path), cut, None))) == docs
  lines = data.split(b'\n')
  lines[7] = b'{"text": oops}'
  path.write_bytes(b'\n'.join(lines))
  start = len(b'\n'.join(lines[:5]))  # a range that starts mid-file still names line 8
  with pytest.raises(UserError, match=r'x\.jsonl:8 is not valid JSON'):
    list(documents.read_piece(str(path), start, None))


def test_invalid_utf8_in_compressed_and_ranged_reads_is_replaced_once(tmp_path):
  path = tmp_path / 'bad.txt.gz'
  path.write_bytes(gzip.compress(b'ok \xff one\n\nsecond \xfe\n'))
  warned = []
  assert list(documents.read_documents(str(path), warn=warned.append)) == [
      'ok \ufffd one', 'second \ufffd']
  assert warned == [str(path)]


def test_record_bytes_equal_tfds_serializer():
  import tensorflow_datasets as tfds
  for field in ('text', 'content'):
    features = tfds.features.FeaturesDict({field: tfds.features.Text()})
    for text in ['a', 'héllo 中文', 'x' * 127, 'y' * 128, 'z' * 20000, '中' * 700000]:
      assert prepare_shards.encode_record(text, field) == features.serialize_example(
          {field: text})


def corrupt_inputs(folder):
  good = jsonl_bytes(make_docs(2000, seed=6))
  zst = COMPRESS['zst'](good)
  gz = gzip.compress(good)
  files = {
      'cut.jsonl.zst': zst[:len(zst) // 2],
      'garbage.jsonl.zst': b'not zstd at all' * 10,
      'cut.jsonl.gz': gz[:len(gz) // 2],
      'garbage.txt.gz': b'\x1f\x8b not really gzip' * 10,
      'cut.txt.xz': lzma.compress(good)[:200],
      'cut.txt.bz2': bz2.compress(good)[:200],
      'garbage.parquet': b'PAR1 not parquet PAR1',
  }
  for name, data in files.items():
    (folder / name).write_bytes(data)
  return [folder / name for name in files]


def test_damaged_files_are_one_user_error_naming_the_file(tmp_path):
  for path in corrupt_inputs(tmp_path):
    with pytest.raises(UserError) as raised:
      list(documents.read_documents(str(path)))
    message = str(raised.value)
    assert str(path) in message and '\n' not in message, message


def test_parquet_without_the_column_names_its_columns(tmp_path):
  path = tmp_path / 'fineweb.parquet'
  pq.write_table(pa.table({'id': [1], 'content': ['x']}), path)
  with pytest.raises(UserError, match='has no column "text" \\(its columns: id, content\\)'):
    list(documents.read_documents(str(path)))
  pq.write_table(pa.table({'text': [1, 2]}), path)
  with pytest.raises(UserError, match='holds int64, not strings'):
    list(documents.read_documents(str(path)))
  pq.write_table(pa.table({'text': ['a', None]}), path)
  with pytest.raises(UserError, match='row 1 has no "text"'):
    list(documents.read_documents(str(path)))
