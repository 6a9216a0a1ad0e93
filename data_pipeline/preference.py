"""Preference pairs (chosen vs rejected) for the reward model and DPO.

Formats users already have (TRL / OpenRLHF), detected per record:
- explicit prompt: {"prompt", "chosen", "rejected"}, each a string or a message list;
- implicit prompt: {"chosen", "rejected"}, two conversations sharing their prefix.
Optional `margin` (a number) and `kind` (a label) are kept and reported.

Each pair becomes two rows (chosen, rejected) of one sequence each, right
padded: inputs = ids[:seq_len], targets = ids[1:seq_len + 1], `loss_mask` marks
the response's tokens (assistant content and end-of-turn after the prompt),
segment id 1 on real tokens. A response that overflows keeps its start
(counted); a pair whose prompt leaves no room for a response, or whose chosen
equals its rejected, is skipped (counted); a file with no usable pair is an error.
"""
import grain
import numpy as np

from configs.errors import UserError
from data_pipeline import chat_template
from data_pipeline import jsonl
from data_pipeline.pretrain_loader import sharded_batches

ROW_FIELDS = ('inputs', 'targets', 'loss_mask', 'segment_ids', 'positions')


def as_messages(value, role, where, field):
  return chat_template.as_messages(value, role, where, field)


def to_pair(record, where):
  """{'prompt': messages, 'chosen': messages, 'rejected': messages, 'margin', 'kind'}."""
  if not isinstance(record, dict) or 'chosen' not in record or 'rejected' not in record:
    raise UserError(f'{where} needs "chosen" and "rejected" (and optionally "prompt"); '
                    'convert it to the TRL preference format')
  if 'prompt' in record:
    prompt = as_messages(record['prompt'], 'user', where, 'prompt')
    chosen = as_messages(record['chosen'], 'assistant', where, 'chosen')
    rejected = as_messages(record['rejected'], 'assistant', where, 'rejected')
  else:  # implicit prompt: the longest common prefix of the two conversations
    a = as_messages(record['chosen'], 'assistant', where, 'chosen')
    b = as_messages(record['rejected'], 'assistant', where, 'rejected')
    shared = 0
    while shared < min(len(a), len(b)) - 1 and a[shared] == b[shared]:
      shared += 1
    prompt, chosen, rejected = a[:shared], a[shared:], b[shared:]
  if not any(m['role'] == 'assistant' for m in chosen + rejected):
    raise UserError(f'{where}: the responses hold no assistant message; give the answers as '
                    'assistant turns')
  margin = jsonl.finite_number(record, 'margin', where, 0.0)
  kind = record.get('kind')
  if kind is not None and (isinstance(kind, bool) or not isinstance(kind, (str, int))):
    raise UserError(f'{where}: "kind" must be a string (a label); got {kind!r:.40}')
  return {'prompt': prompt, 'chosen': chosen, 'rejected': rejected, 'margin': margin,
          'kind': 'pair' if kind is None else str(kind)}


def read_pairs(paths):
  pairs = []
  for path in paths:
    before = len(pairs)
    pairs += [to_pair(record, where) for where, record in jsonl.records(path, 'preference file')]
    if len(pairs) == before:
      raise UserError(f'preference file {path} holds no pair (it is empty or blank); give '
                      '{"prompt", "chosen", "rejected"} lines')
  return pairs


def make_row(ids, mask, seq_len):
  n = min(len(ids), seq_len)
  row = {name: np.zeros(seq_len, np.int32) for name in ROW_FIELDS}
  row['inputs'][:n] = ids[:n]
  targets = ids[1:seq_len + 1]
  row['targets'][:len(targets)] = targets
  row['loss_mask'][:len(targets)] = mask[1:seq_len + 1]
  row['segment_ids'][:n] = 1
  row['positions'][:n] = np.arange(n)
  return row


def response_ids(tokenizer, prompt, response):
  """(ids, mask): the conversation, with the mask on the response's assistant tokens only."""
  ids, mask = chat_template.encode(tokenizer, prompt + response)
  prompt_len = len(chat_template.encode(tokenizer, prompt)[0])
  mask = mask.copy()
  mask[:prompt_len] = 0
  return ids, mask, prompt_len


def tokenize_pairs(pairs, tokenizer, seq_len):
  """(examples, stats); each example: every row field as a (2, seq_len) array
  (chosen first), plus `margin` and `kind` (an index into stats['kinds'])."""
  stats = {'pairs': len(pairs), 'identical': 0, 'no_room': 0, 'truncated': 0}
  kinds = sorted({p['kind'] for p in pairs})
  examples = []
  for pair in pairs:
    if pair['chosen'] == pair['rejected']:
      stats['identical'] += 1
      continue
    rows, skip = [], False
    for response in (pair['chosen'], pair['rejected']):
      ids, mask, prompt_len = response_ids(tokenizer, pair['prompt'], response)
      # The inputs must reach past <|assistant|> into the answer: a row holding only the
      # prompt and the role marker would score (reward) and predict (DPO) nothing of it.
      if prompt_len + 2 > seq_len:
        skip = True
        break
      if len(ids) > seq_len:
        stats['truncated'] += 1
      rows.append(make_row(ids, mask, seq_len))
    if skip:
      stats['no_room'] += 1
      continue
    example = {k: np.stack([rows[0][k], rows[1][k]]) for k in ROW_FIELDS}
    # Per row (chosen, rejected), so every batch field has the rows' leading shape.
    example['margin'] = np.full(2, pair['margin'], np.float32)
    example['kind'] = np.full(2, kinds.index(pair['kind']), np.int32)
    examples.append(example)
  stats['kinds'] = kinds
  return examples, stats


def check_not_empty(examples, stats, what):
  if not examples:
    raise UserError(f'{what}: none of its {stats["pairs"]} pairs is usable ({stats["identical"]} '
                    f'with chosen == rejected, {stats["no_room"]} whose prompt leaves no room for '
                    'a response in data.seq_len); fix the pairs or raise data.seq_len')


def make_dataset(examples, *, batch_size, seed, shuffle=True, num_epochs=None,
                 process_index=0, process_count=1, drop_remainder=True):
  ds = grain.MapDataset.source(examples)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[process_index::process_count].repeat(num_epochs)
  return ds.to_iter_dataset().batch(batch_size, drop_remainder=drop_remainder)


def train_dataset(config, examples, row_block, num_blocks):
  """This process's shards of the pair stream; batches are (pairs, 2, seq_len)."""
  return sharded_batches(config, row_block, num_blocks, lambda shard, shards, rows: make_dataset(
      examples, batch_size=rows, seed=config.seed, process_index=shard, process_count=shards))


def eval_batches(examples, rows):
  """One ordered pass, padded to `rows` pairs per batch (padding pairs: segment ids 0)."""
  out = []
  for begin in range(0, len(examples), rows):
    chunk = examples[begin:begin + rows]
    batch = {k: np.stack([e[k] for e in chunk]) for k in chunk[0]}
    pad = rows - len(chunk)
    out.append({k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()})
  return out


def load_pairs(config, tokenizer, files, embedded_pairs, what):
  """(examples, stats) of preference JSONL `files`, or of `embedded_pairs()` when none."""
  pairs = read_pairs(files) if files else embedded_pairs()
  examples, stats = tokenize_pairs(pairs, tokenizer, config.data.seq_len)
  check_not_empty(examples, stats, what)
  return examples, stats


def rows_of(batch):
  """(pairs, 2, T) fields → (2·pairs, T) rows, chosen and rejected interleaved."""
  return {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items() if k in ROW_FIELDS}
