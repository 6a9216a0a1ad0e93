"""The classical baseline for bits per byte: xz compressing the validation text
after the training text, counted as the extra bytes it costs.

    bits/byte = 8 * (len(xz(train + val)) - len(xz(train))) / len(val)

xz is LZMA2 at preset 9e with a 64 MiB dictionary, so it may copy from any of the
training text it still holds, as a model may use what it learned from it. Each
document is followed by a blank line, as in the text files (with the embedded
corpus this gives the 2.238 bits/byte the project quotes). Compressing a few MiB
at 9e takes seconds, so the result is cached under a hash of both texts.
"""
import hashlib
import json
import lzma
import os

from engine import paths

DICT_SIZE = 64 * 2**20
FILTERS = ({'id': lzma.FILTER_LZMA2, 'preset': 9 | lzma.PRESET_EXTREME, 'dict_size': DICT_SIZE},)
SEPARATOR = '\n\n'


def xz_size(data):
  return len(lzma.compress(data, format=lzma.FORMAT_XZ, filters=list(FILTERS)))


def extra_bits_per_byte(train_bytes, val_bytes):
  if not val_bytes:
    raise ValueError('the validation text is empty')
  return 8 * (xz_size(train_bytes + val_bytes) - xz_size(train_bytes)) / len(val_bytes)


def as_text(documents):
  return ''.join(doc + SEPARATOR for doc in documents)


def keep_tail(data, limit):
  """The last `limit` bytes (0 = all): beyond its dictionary xz forgets the start anyway."""
  return data[-limit:] if limit and len(data) > limit else data


def cached_baseline(train_text, val_text, cache_dir, max_train_bytes=0, write=True):
  """{'bits_per_byte', 'train_bytes', 'val_bytes', 'train_truncated'}, computed once per
  pair of texts (the cache file's name is their hash; `write=False`: read it only)."""
  train = train_text.encode('utf-8')
  val = val_text.encode('utf-8')
  truncated = bool(max_train_bytes) and len(train) > max_train_bytes
  train = keep_tail(train, max_train_bytes)
  digest = hashlib.sha256()
  for part in (train, b'\0', val, repr(FILTERS).encode()):
    digest.update(part)
  path = os.path.join(cache_dir, f'xz_{digest.hexdigest()[:20]}.json')
  if paths.isfile(path):
    try:
      return json.loads(paths.read_text(path))
    except ValueError:
      pass  # a cut-short cache file: compute again
  result = {'bits_per_byte': extra_bits_per_byte(train, val), 'train_bytes': len(train),
            'val_bytes': len(val), 'train_truncated': truncated,
            'method': 'xz -9e (LZMA2, 64 MiB dictionary), validation after training text'}
  if not write:
    return result
  paths.write_atomic(path, json.dumps(result))
  return result


def corpus_texts(config, workdir, max_train_bytes=0):
  """(training text, validation text) of a pretraining workdir's corpus: the documents
  `prepare` put in its splits, in file order (a TFDS dataset: in split order)."""
  if config.data.tfds_name:
    from data_pipeline import tfds_corpus

    def split_docs(split, limit):
      source, docs, size = tfds_corpus.open_split(config, workdir, split), [], 0
      for i in range(len(source)):
        text = source[i][config.data.text_field]
        docs.append(text.decode('utf-8') if isinstance(text, bytes) else text)
        size += len(docs[-1])
        if limit and size > 4 * limit:  # enough text: the tail is kept later
          break
      return docs
    return (as_text(split_docs(config.data.train_split, max_train_bytes)),
            as_text(split_docs(config.data.eval_split, 0)))
  from data_pipeline import documents
  from data_pipeline import embedded
  return (as_text(documents.iter_documents(embedded.train_files(config), config.data)),
          as_text(documents.iter_documents(embedded.eval_files(config), config.data,
                                           'data.eval_files')))
