"""Reads documents from text, JSONL and Parquet files, plain or compressed, streamed.

Text files: one document per blank-line-separated block (or per file).
JSONL files: one document per line, from a string field (default "text").
Parquet files: one document per row, from a string column (`data.text_field`).
`.gz`/`.zst`/`.bz2`/`.xz` are decompressed on the fly; the format is the extension
under that suffix (`x.jsonl.zst`). Arguments may be files, directories or globs
(`data/*.parquet`), local or gs://.

Files are read line by line (Parquet: a batch of rows at a time), so memory does
not grow with the file. Plain files can also be read by byte range, so `prepare`
splits a big file between processes: a range owns the documents that *start*
in it, whatever the split points (see `read_piece`).

Invalid UTF-8 is replaced by U+FFFD with a warning naming the file,
because scraped corpora often hold a few stray bytes and refusing the whole run
for them helps nobody; the byte-fallback tokenizer can represent U+FFFD.
"""
import json
import re

from absl import logging

from configs.errors import UserError
from data_pipeline import corpus_paths
from data_pipeline import corpus_streams
from data_pipeline import parquet_documents

JSONL_EXTENSIONS = ('.jsonl', '.json', '.ndjson')
expand_paths = corpus_paths.expand_paths  # files, folders and globs → the files, in order
_VISIBLE_ASCII = re.compile(rb'[\x21-\x7e]')


def file_format(path, text_format='auto'):
  """'parquet' (by extension, whatever text_format says), else 'jsonl' or 'text'."""
  _, inner = corpus_streams.compression_of(path)
  if inner.lower().endswith(parquet_documents.PARQUET_EXTENSIONS):
    return 'parquet'
  if text_format != 'auto':
    return text_format
  return 'jsonl' if inner.lower().endswith(JSONL_EXTENSIONS) else 'text'


def splittable(path, text_format='auto', text_split='blank_line'):
  """Whether byte ranges of the file can be read on their own (plain text/JSONL)."""
  compression, _ = corpus_streams.compression_of(path)
  return (compression is None and file_format(path, text_format) != 'parquet' and
          not (file_format(path, text_format) == 'text' and text_split == 'file'))


def warn_invalid_utf8(path):
  logging.warning('%s is not valid UTF-8; invalid bytes were replaced by U+FFFD', path)


class _Decoder:
  """UTF-8 per line (a newline byte never sits inside a multi-byte character, so this
  equals decoding the whole file), reporting a file with bad bytes once."""

  def __init__(self, path, warn):
    self._path, self._warn, self._warned = path, warn, False

  def __call__(self, raw):
    try:
      return raw.decode('utf-8')
    except UnicodeDecodeError:
      if not self._warned:
        self._warned = True
        self._warn(self._path)
      return raw.decode('utf-8', errors='replace')


def _line_number(path, position):
  """1-based number of the line starting at byte `position` (errors only: a range
  reader does not count the lines before its start)."""
  count, done = 1, 0
  with corpus_streams.open_raw(path) as f:
    while done < position:
      chunk = f.read(min(corpus_streams.READ_BUFFER, position - done))
      if not chunk:
        break
      count, done = count + chunk.count(b'\n'), done + len(chunk)
  return count


def _jsonl(lines, path, text_field, decode, end, numbered):
  for number, (position, raw) in enumerate(lines, 1):
    if position >= end:
      return
    line = decode(raw)
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      where = number if numbered else _line_number(path, position)
      raise UserError(f'{path}:{where} is not valid JSON ({e.msg}); fix the line or '
                      'set data.text_format=text') from None
    value = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(value, str):
      where = number if numbered else _line_number(path, position)
      raise UserError(f'{path}:{where} has no string field "{text_field}"; set '
                      'data.text_field to the key that holds the text')
    if value.strip():
      yield value


def _blocks(lines, decode, end, inside_earlier_block):
  """Blank-line-separated blocks, as `re.split(r'\\n\\s*\\n', text)` cuts them: a
  separator is a run of whitespace-only lines with a newline before and after, so
  the file's first line and an unterminated last line never separate. A block
  belongs to the range where its first line starts; a range starting inside a
  block skips to the next separator."""
  block, at_boundary, skipping = [], not inside_earlier_block, inside_earlier_block
  for position, raw in lines:
    line = decode(raw)
    if position > 0 and line.endswith('\n') and line.isspace():
      if block:
        yield block
        block = []
      at_boundary, skipping = True, False
      continue
    if position >= end and (at_boundary or skipping):
      break  # the next block starts at or after `end`: another range's
    at_boundary = False
    if not skipping:
      block.append(line)
  if block:
    yield block


def _text(lines, decode, end, inside_earlier_block):
  for block in _blocks(lines, decode, end, inside_earlier_block):
    text = ''.join(block).strip('\n')
    if text.strip():
      yield text


def _lines_from(f, position):
  for raw in f:
    yield position, raw
    position += len(raw)


def _line_start_at_or_after(f, start):
  """Seeks to the first line start >= start; returns it."""
  if start == 0:
    return 0  # compressed streams cannot seek, and need not
  f.seek(start - 1)
  return start - 1 + len(f.readline())


def _after_separator(f, position):
  """Whether the line ending just before `position` is a separator (whitespace only,
  not the file's first line). Reads backwards until that line's start."""
  tail, end = b'', position - 1  # byte position-1 is that line's newline
  while True:
    low = max(0, end - 4096)
    f.seek(low)
    chunk = f.read(end - low)
    newline = chunk.rfind(b'\n')
    part = chunk[newline + 1:]
    if _VISIBLE_ASCII.search(part):
      return False
    tail = part + tail
    if newline >= 0:
      return not tail or tail.decode('utf-8', errors='replace').isspace()
    if low == 0:
      return False  # the file's first line
    end = low


def read_piece(path, start, end, text_format='auto', text_field='text',
               text_split='blank_line', warn=warn_invalid_utf8):
  """Yields the documents of one piece of a file: Parquet row groups [start, end),
  the documents starting in bytes [start, end) of a plain text/JSONL file, or the
  whole file (start=0, end=None). Consecutive pieces give exactly the documents of
  the whole file, in order."""
  fmt = file_format(path, text_format)
  if fmt == 'parquet':
    yield from parquet_documents.read(path, text_field, start, end)
    return
  end = float('inf') if end is None else end
  decode = _Decoder(path, warn)
  with corpus_streams.open_stream(path) as f:
    if fmt == 'text' and text_split == 'file':
      text = decode(f.read())
      if text.strip():
        yield text
      return
    position = _line_start_at_or_after(f, start)
    inside = False
    if fmt == 'text' and position > 0:
      inside = not _after_separator(f, position)
      f.seek(position)
    lines = _lines_from(f, position)
    if fmt == 'jsonl':
      yield from _jsonl(lines, path, text_field, decode, end, numbered=start == 0)
    else:
      yield from _text(lines, decode, end, inside)


def read_documents(path, text_format='auto', text_field='text', text_split='blank_line',
                   warn=warn_invalid_utf8):
  """Yields the non-empty documents of one file as str."""
  yield from read_piece(path, 0, None, text_format, text_field, text_split, warn)


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
