"""Held-out preference accuracy: does the chosen response score above the rejected?

Used for the reward model (its scores) and for DPO (its implicit reward,
β·(log π − log π_ref)). Overall and per `kind` of pair.
"""
import jax
import numpy as np

from data_pipeline import preference
from data_pipeline.global_batch import make_global_batch
from data_pipeline.global_batch import process_row_block


def score_pairs(score_fn, params, frozen, examples, rows, mesh, max_batches=None):
  """(scores (pairs, 2) float64, kinds (pairs,)) for the examples, in order.

  `score_fn(params, frozen, batch)` returns replicated (rows, 2) scores; every
  process packs the same batches and feeds its own block of rows."""
  block, blocks = process_row_block(mesh, rows)
  per_process = rows // blocks
  batches = preference.eval_batches(examples, rows)
  if max_batches:
    batches = batches[:max_batches]
  scores = []
  for batch in batches:
    local = {k: v[block * per_process:(block + 1) * per_process] for k, v in batch.items()}
    out = score_fn(params, frozen, make_global_batch(local, mesh))
    scores.append(np.asarray(out.addressable_data(0), np.float64))
  n = min(len(examples), len(batches) * rows)
  if not scores:  # nothing to score: the callers say which file was empty
    return np.zeros((0, 2), np.float64), np.zeros((0,), np.int32)
  kinds = np.asarray([e['kind'][0] for e in examples[:n]])
  return np.concatenate(scores)[:n], kinds


def accuracy(scores, kinds, kind_names):
  """{'accuracy', 'accuracy_by_kind', 'margin', 'pairs'} (ties count as wrong)."""
  right = scores[:, 0] > scores[:, 1]
  by_kind = {name: float(right[kinds == i].mean()) for i, name in enumerate(kind_names)
             if (kinds == i).any()}
  return {'accuracy': float(right.mean()), 'accuracy_by_kind': by_kind,
          'margin': float((scores[:, 0] - scores[:, 1]).mean()), 'pairs': int(len(right))}


def eval_metrics(score_fn, params, frozen, examples, kind_names, config, mesh):
  """The metrics a preference stage logs at each evaluation (first eval_batches batches)."""
  scores, kinds = score_pairs(score_fn, params, frozen, examples, config.train.batch_size, mesh,
                              config.train.eval_batches)
  result = accuracy(scores, kinds, kind_names)
  metrics = {'eval_accuracy': result['accuracy'], 'eval_margin': result['margin']}
  metrics.update({f'eval_accuracy/{k}': v for k, v in result['accuracy_by_kind'].items()})
  return metrics


def replicated_out(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
