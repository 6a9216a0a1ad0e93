"""The pretraining loader alone: tokens/s from the prepared TFDS dataset to packed batches.

  python bench/loader_timing.py --config=configs/small.py --workdir=runs/bench \\
      --batch=16 --seq_len=1024 [--threads=1,2] [--out=FILE]

Measures `pretrain_loader.make_dataset` (documents read and tokenised a chunk at a
time, `stream_packing`) beside the per-document Grain pipeline it replaced (one
document per Grain element, Grain's ConcatThenSplit), with the same Grain threads,
in alternating order in one process. Both give the same batches (tested in
tests/test_stream_packing.py). The default shape is gpt2_124m's step on one H100
(16 × 1024), which wants about 0.44M tokens/s.
"""
import argparse
import importlib
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import grain  # noqa: E402
import numpy as np  # noqa: E402

from data_pipeline import pretrain_loader  # noqa: E402


def per_document_dataset(source, tokenizer, *, seq_len, batch_size, seed, text_field='text',
                         add_bos=True, process_index=0, process_count=1, num_threads=2,
                         prefetch=8):
  """The loader before chunking: one document per Grain element, Grain's packer."""
  def tokenize(record):  # one SentencePiece call per document, as before
    text = pretrain_loader.record_text(record, text_field)
    ids = ([tokenizer.bos_id] if add_bos else []) + tokenizer.encode(text) + [tokenizer.eos_id]
    ids = np.asarray(ids, dtype=np.int32)
    return {'inputs': ids[:-1], 'targets': ids[1:]}
  ds = pretrain_loader.documents_dataset(source, seed=seed, shuffle=True,
                                         process_index=process_index,
                                         process_count=process_count, num_epochs=None)
  it = ds.map(tokenize).to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                          prefetch_buffer_size=prefetch))
  it = grain.experimental.ConcatThenSplitIterDataset(
      it, length_struct={'inputs': seq_len, 'targets': seq_len})
  it = it.map(lambda p: {'inputs': p['inputs'], 'targets': p['targets'],
                         'segment_ids': p['inputs_segment_ids'],
                         'positions': p['inputs_positions']})
  return it.batch(batch_size)


def tokens_per_s(dataset, batch_size, seq_len, batches):
  it = iter(dataset)
  next(it)  # threads started, first documents read
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch_size * seq_len / (time.perf_counter() - start)


def open_prepared(config, workdir):
  """(source, tokenizer) of `workdir`, training the tokenizer and preparing the data
  there first if needed."""
  from data_pipeline import commands as data_commands
  from data_pipeline import tfds_corpus
  from data_pipeline import tokenizer as tokenizer_lib
  if not os.path.exists(tokenizer_lib.tokenizer_path(workdir, config.tokenizer)):
    data_commands.run_tokenizer(config, workdir)
  tfds_corpus.prepare(config, workdir)
  tokenizer = tokenizer_lib.load_tokenizer(
      tokenizer_lib.tokenizer_path(workdir, config.tokenizer), config.model.vocab_size)
  return tfds_corpus.open_split(config, workdir, config.data.train_split), tokenizer


def measure(config, workdir, *, batch_size, seq_len, threads=(1, 2), batches=60, repeats=2,
            baseline=True):
  """{'loader_tokens_per_s': {threads: best}, 'per_document_tokens_per_s': {...}}."""
  source, tokenizer = open_prepared(config, workdir)
  kwargs = dict(seq_len=seq_len, batch_size=batch_size, seed=config.seed,
                text_field=config.data.text_field, add_bos=config.data.add_bos,
                prefetch=config.data.prefetch)  # one data shard's stream
  out = {'loader_tokens_per_s': {}, 'per_document_tokens_per_s': {}}
  for _ in range(repeats):  # alternating, so both see the same machine load
    for n in threads:
      ours = tokens_per_s(pretrain_loader.make_dataset(source, tokenizer, num_threads=n,
                                                       **kwargs), batch_size, seq_len, batches)
      out['loader_tokens_per_s'][n] = max(ours, out['loader_tokens_per_s'].get(n, 0))
      if baseline:
        theirs = tokens_per_s(per_document_dataset(source, tokenizer, num_threads=n, **kwargs),
                              batch_size, seq_len, batches)
        out['per_document_tokens_per_s'][n] = max(
            theirs, out['per_document_tokens_per_s'].get(n, 0))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/small.py')
  parser.add_argument('--workdir', default='runs/bench')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--seq_len', type=int, default=1024)
  parser.add_argument('--threads', default='1,2')
  parser.add_argument('--batches', type=int, default=60)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  module = args.config.removesuffix('.py').replace('/', '.')
  config = importlib.import_module(module).get_config()
  result = {'config': args.config, 'batch': args.batch, 'seq_len': args.seq_len,
            'host_cores': os.cpu_count(),
            **measure(config, args.workdir, batch_size=args.batch, seq_len=args.seq_len,
                      threads=[int(t) for t in args.threads.split(',')],
                      batches=args.batches)}
  for n, ours in result['loader_tokens_per_s'].items():
    theirs = result['per_document_tokens_per_s'].get(n)
    print(f'{n} thread(s): {ours / 1e3:,.0f}k tokens/s'
          + (f' (per-document pipeline {theirs / 1e3:,.0f}k, ×{ours / theirs:.2f})'
             if theirs else ''))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
