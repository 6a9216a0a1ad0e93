"""Held-out chat loss: mean cross-entropy on assistant tokens (end-of-turn included)."""
import math

from data_pipeline import sft_loader
from data_pipeline.global_batch import make_global_batch
from data_pipeline.global_batch import process_row_block


def assistant_loss(eval_fn, params, frozen, examples, config, mesh, max_batches=None):
  """{'eval_loss', 'eval_perplexity', 'eval_tokens'} over the held-out conversations
  (all of them, or the first `max_batches` packed batches; every process takes part)."""
  rows = config.train.batch_size
  block, blocks = process_row_block(mesh, rows)
  batches = sft_loader.eval_batches(examples, config.data.seq_len, rows)
  if max_batches:
    batches = batches[:max_batches]
  total, count = 0.0, 0.0
  per_process = rows // blocks
  for batch in batches:  # every process packs the same rows and feeds its own block
    local = {k: v[block * per_process:(block + 1) * per_process] for k, v in batch.items()}
    ce, n = eval_fn(params, frozen, make_global_batch(local, mesh))
    total, count = total + float(ce), count + float(n)
  loss = total / max(count, 1.0)
  return {'eval_loss': loss, 'eval_perplexity': math.exp(min(loss, 50.0)),
          'eval_tokens': count}
