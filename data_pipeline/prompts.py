"""Prompts for RL rollouts: JSONL `{"prompt": str | messages}` (other keys kept), or
the embedded instruction set's training prompts (never its held-out split).

Each prompt is the chat template up to `<|assistant|>`, right-padded to
`max_prompt_len`; a longer prompt is skipped and counted, and a file with no
prompt that fits is an error. Batches carry `prompt` (B, P), `length` (B, 1) and
`lang` (B, 1: 0 = zh, 1 = en, -1 = unknown; for the answer-language rule).
"""
import grain
import numpy as np

from configs.errors import UserError
from data_pipeline import chat_formats
from data_pipeline import chat_template
from data_pipeline import embedded
from data_pipeline import jsonl
from data_pipeline.pretrain_loader import sharded_batches

LANGS = ('zh', 'en')


def read_prompts(files):
  """[(messages, lang or None)] from prompt JSONL files or the embedded training set."""
  if not files:
    records = chat_formats.read_chat_files(embedded.INSTRUCTION_TRAIN_FILES)
    out = []
    for r in records:
      last = max(i for i, m in enumerate(r['messages']) if m['role'] == 'assistant')
      out.append((r['messages'][:last], r.get('lang')))
    return out
  out = []
  for path in files:
    before = len(out)
    for where, record in jsonl.records(path, 'prompt file'):
      if 'prompt' not in record:
        raise UserError(f'{where} has no "prompt"; give {{"prompt": text or messages}} lines')
      messages = chat_template.as_messages(record['prompt'], 'user', where, 'prompt')
      chat_template.check_string(record, 'lang', where, required=False)
      out.append((messages, record.get('lang')))
    if len(out) == before:
      raise UserError(f'prompt file {path} holds no prompt (it is empty or blank); give '
                      '{"prompt": text or messages} lines')
  return out


def tokenize_prompts(prompts, tokenizer, max_prompt_len):
  examples, skipped = [], 0
  for messages, lang in prompts:
    ids = chat_template.prompt_ids(tokenizer, messages)
    if len(ids) > max_prompt_len:
      skipped += 1
      continue
    row = np.zeros(max_prompt_len, np.int32)
    row[:len(ids)] = ids
    examples.append({'prompt': row, 'length': np.asarray([len(ids)], np.int32),
                     'lang': np.asarray([LANGS.index(lang) if lang in LANGS else -1], np.int32)})
  if not examples:
    raise UserError(f'no prompt fits in {max_prompt_len} tokens (data.seq_len minus '
                    'ppo.max_new_tokens); raise data.seq_len or lower ppo.max_new_tokens')
  return examples, {'prompts': len(prompts), 'too_long': skipped}


def train_dataset(config, examples, row_block, num_blocks):
  def make(shard, shards, rows):
    ds = grain.MapDataset.source(examples).shuffle(seed=config.seed)[shard::shards].repeat(None)
    return ds.to_iter_dataset().batch(rows, drop_remainder=True)
  return sharded_batches(config, row_block, num_blocks, make)
