"""Validation loss of the pretraining corpus during training (any stage).

Pretraining tracks it to see progress; fine-tuning stages report it before and
after to show what fine-tuning cost (catastrophic forgetting).
"""
import math

import jax
import numpy as np

from data_pipeline import pretrain_loader
from data_pipeline.global_batch import make_global_batch


def validation_loss(eval_fn, params, frozen, config, source, tokenizer, mesh, num_batches):
  """Mean next-token loss over the first `num_batches` validation batches."""
  per_process = config.train.batch_size // jax.process_count()
  it = iter(pretrain_loader.eval_dataset(config, source, tokenizer, jax.process_index(),
                                         jax.process_count()))
  total, count = 0.0, 0.0
  for _ in range(num_batches):
    local = next(it, None)
    if local is None:  # keep every process stepping together: pad with empty rows
      local = {k: np.zeros((0, config.data.seq_len), np.int32)
               for k in ('inputs', 'targets', 'segment_ids', 'positions')}
    batch = make_global_batch(pretrain_loader.pad_batch(local, per_process), mesh)
    ce, n = eval_fn(params, frozen, batch)
    total, count = total + float(ce), count + float(n)
  loss = total / max(count, 1.0)
  return {'eval_loss': loss, 'eval_perplexity': math.exp(min(loss, 50.0)), 'eval_tokens': count}
