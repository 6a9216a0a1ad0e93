"""Chat conversations → packed SFT batches (inputs, targets, loss_mask, segment ids,
positions), with a checkpointable Grain iterator like pretraining's.

Whole conversations are packed into rows (first fit, never split across rows),
so every conversation attends only to itself. Rules, counted and reported:
- a conversation with no assistant token to learn is skipped ("empty");
- one longer than `seq_len` + 1 tokens keeps its first `seq_len` + 1 tokens
  (`sft.truncation='truncate'`, the default; "truncated") or is skipped (`'drop'`;
  "dropped_long"); if truncation leaves no assistant token it is skipped ("cut_off").
Each skipped or truncated conversation is counted under exactly one of these.
For prompt tuning, `num_virtual` placeholder tokens start every conversation:
the model replaces their embeddings (positions 0..N-1) with the soft prompt.
"""
import grain
import numpy as np

from configs.errors import UserError
from data_pipeline import chat_template
from data_pipeline.pretrain_loader import sharded_batches

FIELDS = ('inputs', 'targets', 'loss_mask')


def tokenize_conversations(records, tokenizer, seq_len, num_virtual=0, truncation='truncate'):
  """(examples, stats). Each example: inputs/targets/loss_mask int32 arrays."""
  examples = []
  stats = {'conversations': len(records), 'empty': 0, 'truncated': 0, 'dropped_long': 0,
           'cut_off': 0, 'trained_tokens': 0}
  for record in records:
    ids, mask = chat_template.encode(tokenizer, record['messages'])
    if num_virtual:
      ids = np.concatenate([np.full(num_virtual, tokenizer.pad_id, np.int32), ids])
      mask = np.concatenate([np.zeros(num_virtual, np.int32), mask])
    if not mask.any():
      stats['empty'] += 1
      continue
    if len(ids) - 1 > seq_len:
      if truncation == 'drop':
        stats['dropped_long'] += 1
        continue
      ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
      if not mask[1:].any():  # each conversation is counted once, under one reason
        stats['cut_off'] += 1
        continue
      stats['truncated'] += 1
    examples.append({'inputs': ids[:-1], 'targets': ids[1:], 'loss_mask': mask[1:]})
    stats['trained_tokens'] += int(mask[1:].sum())
  return examples, stats


def check_not_empty(examples, stats, what):
  if not examples:
    raise UserError(f'{what}: none of its {stats["conversations"]} conversations has an '
                    f'assistant reply to train on ({stats["empty"]} without an assistant turn, '
                    f'{stats["cut_off"]} whose reply starts beyond data.seq_len, '
                    f'{stats["dropped_long"]} dropped as too long); give conversations with '
                    'assistant turns or raise data.seq_len')


def _rename(packed):
  return {'inputs': packed['inputs'], 'targets': packed['targets'],
          'loss_mask': packed['loss_mask'].astype(np.int32),
          'segment_ids': packed['inputs_segment_ids'].astype(np.int32),
          'positions': packed['inputs_positions'].astype(np.int32)}


def make_dataset(examples, *, seq_len, batch_size, seed, shuffle=True, num_epochs=None,
                 process_index=0, process_count=1, drop_remainder=True):
  """An IterDataset of packed batches of `batch_size` rows (this shard's share)."""
  ds = grain.MapDataset.source(examples)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[process_index::process_count].repeat(num_epochs)
  it = grain.experimental.FirstFitPackIterDataset(
      ds.to_iter_dataset(), length_struct={f: seq_len for f in FIELDS},
      num_packing_bins=batch_size, shuffle_bins=False)
  return it.map(_rename).batch(batch_size, drop_remainder=drop_remainder)


def train_dataset(config, examples, row_block, num_blocks):
  """This process's data shards of the training stream (as pretrain_loader's)."""
  return sharded_batches(config, row_block, num_blocks, lambda shard, shards, rows: make_dataset(
      examples, seq_len=config.data.seq_len, batch_size=rows, seed=config.seed,
      process_index=shard, process_count=shards))


def eval_batches(examples, seq_len, rows, process_index=0, process_count=1):
  """One ordered pass (this process's share), every batch padded to `rows` rows."""
  out = []
  for batch in make_dataset(examples, seq_len=seq_len, batch_size=rows, seed=0, shuffle=False,
                            num_epochs=1, process_index=process_index,
                            process_count=process_count, drop_remainder=False):
    pad = rows - batch['inputs'].shape[0]
    out.append({k: np.pad(v, ((0, pad), (0, 0))) for k, v in batch.items()})
  return out
