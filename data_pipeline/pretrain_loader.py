"""Grain pipeline for pretraining: shuffle → shard → read and tokenise → pack → batch.

Each process reads only its own share of the documents. The iterator is
checkpointable (`get_state`/`set_state`): a resumed run continues at the exact
next batch, without replaying the stream (Levanter's promise).

Documents are read and tokenised `DOCUMENTS_PER_CHUNK` at a time in Grain's
threads (one batched read, one SentencePiece call, which releases the GIL), and
packed by `stream_packing` (the rows of Grain's concat-then-split, a chunk per
Python step instead of a document).
"""
import grain
import numpy as np

from configs.errors import UserError
from data_pipeline.stream_packing import PackedRowsIterDataset

DOCUMENTS_PER_CHUNK = 64  # part of the iterator state: the parent's position counts chunks


def _read(source, indices):
  """Records at `indices`, in one batched read where the source has one (TFDS)."""
  getitems = getattr(source, '__getitems__', None)
  return getitems(list(indices)) if getitems else [source[int(i)] for i in indices]


def record_text(record, text_field):
  """A record's text as str (TFDS gives bytes; invalid UTF-8 is replaced)."""
  text = record[text_field]
  return text.decode('utf-8', errors='replace') if isinstance(text, bytes) else text


def tokenize_chunk(records, tokenizer, text_field, add_bos):
  """[BOS] + ids + [EOS] of each record, int32 arrays (BOS only with `add_bos`)."""
  head = [tokenizer.bos_id] if add_bos else []
  return [np.asarray(head + ids + [tokenizer.eos_id], dtype=np.int32)
          for ids in tokenizer.encode_batch([record_text(r, text_field) for r in records])]


def _in_order(ds, *, seed, shuffle, process_index, process_count, num_epochs):
  """Global shuffle (reseeded each epoch), then this process's slice, so per epoch the
  processes' shares are disjoint and complete."""
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[process_index::process_count]
  return ds.repeat(num_epochs)


def document_indices(length, **order):
  """Record indices as a MapDataset, in the order `make_dataset` reads them."""
  return _in_order(grain.MapDataset.range(length), **order)


def documents_dataset(source, **order):
  """The records themselves in that order, one Grain element each (the same shuffle
  and slice as `document_indices`: both depend only on the length and the seed)."""
  return _in_order(grain.MapDataset.source(source), **order)


def make_dataset(source, tokenizer, *, seq_len, batch_size, seed, text_field='text',
                 add_bos=True, shuffle=True, num_epochs=None, process_index=0,
                 process_count=1, num_threads=2, prefetch=8, drop_remainder=True):
  """An IterDataset of packed batches of `batch_size` rows (this process's share)."""
  ds = document_indices(len(source), seed=seed, shuffle=shuffle, process_index=process_index,
                        process_count=process_count, num_epochs=num_epochs)
  ds = ds.batch(DOCUMENTS_PER_CHUNK, drop_remainder=False, batch_fn=list)
  ds = ds.map(lambda indices: tokenize_chunk(_read(source, indices), tokenizer, text_field,
                                             add_bos))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=prefetch))
  it = PackedRowsIterDataset(it, seq_len, DOCUMENTS_PER_CHUNK)
  return it.batch(batch_size, drop_remainder=drop_remainder)


class ShardedBatches:
  """This process's data shards, each an independent Grain stream.

  The global batch is the shards' batches in shard order, so it is the same
  whatever the number of processes reading them (2 processes × 1 shard and
  1 process × 2 shards see identical batches), and a checkpoint's per-shard
  states restore under another process count.
  """

  def __init__(self, iterators):
    self.iterators = iterators  # {shard index: iterator}, in shard order

  def __iter__(self):
    return self

  def __next__(self):
    batches = [next(it) for it in self.iterators.values()]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def get_state(self):
    return {'shards': {str(s): it.get_state() for s, it in self.iterators.items()}}

  def set_state(self, state):
    for shard, it in self.iterators.items():
      it.set_state(state['shards'][str(shard)])


def sharded_batches(config, row_block, num_blocks, make_shard):
  """This process's data shards as one ShardedBatches.

  `row_block` / `num_blocks`: which contiguous block of global batch rows this
  process holds (see global_batch.process_row_block). `make_shard(shard, shards,
  rows)` builds one shard's dataset of `rows`-row batches; every stage's loader
  (pretrain, sft, preference pairs) shards the same way.
  """
  batch = config.train.batch_size
  shards = config.data.num_shards or num_blocks
  if shards % num_blocks or batch % shards:
    raise UserError(f'data.num_shards={shards} must be a multiple of the {num_blocks} '
                    f'processes and divide train.batch_size={batch}')
  per_process = shards // num_blocks
  mine = range(row_block * per_process, (row_block + 1) * per_process)
  return ShardedBatches({shard: iter(make_shard(shard, shards, batch // shards))
                         for shard in mine})


def train_dataset(config, source, tokenizer, row_block, num_blocks):
  """This process's share of the training stream."""
  return sharded_batches(config, row_block, num_blocks, lambda shard, shards, rows: make_dataset(
      source, tokenizer, seq_len=config.data.seq_len, batch_size=rows, seed=config.seed,
      text_field=config.data.text_field, add_bos=config.data.add_bos, process_index=shard,
      process_count=shards, num_threads=config.data.num_threads, prefetch=config.data.prefetch))


def eval_dataset(config, source, tokenizer, process_index, process_count, batch_size=None):
  """One pass over the validation split in file order; the last batch may be short."""
  batch = batch_size or config.train.batch_size
  return make_dataset(source, tokenizer, seq_len=config.data.seq_len,
                      batch_size=max(1, batch // process_count), seed=config.seed,
                      text_field=config.data.text_field, add_bos=config.data.add_bos,
                      shuffle=False, num_epochs=1, process_index=process_index,
                      process_count=process_count, num_threads=config.data.num_threads,
                      prefetch=config.data.prefetch, drop_remainder=False)


def pad_batch(batch, batch_size):
  """Pads a short final batch with segment id 0 rows (ignored by the loss)."""
  rows = batch['inputs'].shape[0]
  if rows == batch_size:
    return batch
  return {k: np.concatenate([v, np.zeros((batch_size - rows,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


