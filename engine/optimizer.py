"""The optimizer: global-norm clipping, then AdamW (`train.optimizer='adamw'`) or Muon
(`'muon'`), with linear warmup + cosine decay, and weight decay only on matrices (never
on norms or biases)."""
import jax
import optax
from optax import contrib

# Params Muon never orthogonalises: the vocabulary tables (Muon's authors and the
# speedruns keep embeddings and the output head on Adam) and every vector.
_ADAM_ONLY = ('embed', 'lm_head')


def learning_rate_schedule(train, peak=None):
  peak = train.learning_rate if peak is None else peak
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak,
      warmup_steps=min(train.warmup_steps, train.steps - 1),
      decay_steps=max(train.steps, 1),
      end_value=peak * train.min_lr_ratio)


def decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def muon_dimension_numbers(params):
  """Which axes of each kernel Muon treats as the matrix's input and output.

  Kernels list their input axes first: (embed, heads, head_dim) for the query, key and
  value projections, (heads, head_dim, embed) for the output projection, (embed, mlp) /
  (mlp, embed) for the MLP. So a 3-axis kernel is read as its first axis -> the rest,
  except the output projection `wo`: everything before its last axis -> the last.
  Leaves named in _ADAM_ONLY and vectors get None (AdamW).
  """
  def rule(path, p):
    name = getattr(path[-1], 'key', None)
    if p.ndim < 2 or name in _ADAM_ONLY:
      return None
    if p.ndim == 2:
      return contrib.MuonDimensionNumbers(0, 1)
    if name == 'wo':
      return contrib.MuonDimensionNumbers(tuple(range(p.ndim - 1)), p.ndim - 1)
    return contrib.MuonDimensionNumbers(0, tuple(range(1, p.ndim)))
  return jax.tree_util.tree_map_with_path(rule, params)


def make_optimizer(train):
  parts = []
  if train.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(train.grad_clip))
  if train.optimizer == 'adamw':
    parts.append(optax.adamw(learning_rate_schedule(train), b1=train.b1, b2=train.b2,
                             eps=train.eps, weight_decay=train.weight_decay, mask=decay_mask))
  elif train.optimizer == 'muon':
    parts.append(contrib.muon(
        learning_rate_schedule(train, train.muon_learning_rate),
        ns_steps=train.muon_ns_steps, beta=train.muon_beta,
        preconditioning=train.muon_preconditioning, weight_decay=train.weight_decay,
        weight_decay_mask=decay_mask,
        adam_learning_rate=learning_rate_schedule(train), adam_b1=train.b1,
        adam_b2=train.b2, eps=train.eps, nesterov=True,
        muon_weight_dimension_numbers=muon_dimension_numbers))
  else:
    raise ValueError(f'unknown train.optimizer {train.optimizer!r}')  # validate.py names it
  return optax.chain(*parts)
