"""AdamW with linear warmup + cosine decay, global-norm clipping, and weight
decay only on matrices (never on norms or biases)."""
import jax
import optax


def learning_rate_schedule(train):
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train.learning_rate,
      warmup_steps=min(train.warmup_steps, train.steps - 1),
      decay_steps=max(train.steps, 1),
      end_value=train.learning_rate * train.min_lr_ratio)


def decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train):
  parts = []
  if train.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(train.grad_clip))
  parts.append(optax.adamw(learning_rate_schedule(train), b1=train.b1, b2=train.b2,
                           eps=train.eps, weight_decay=train.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
