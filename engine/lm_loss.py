"""Next-token cross-entropy over weighted target tokens: the objective of
pretraining (weight = real token) and of supervised fine-tuning (weight =
assistant token). Returned as sums, so microbatches and shards add up exactly."""
import jax
import jax.numpy as jnp


def token_loss_sums(logits, targets, weights, z_loss):
  """(ce sum, z-loss term, weight sum) over the positions with weight > 0.

  `weights` may also be the segment ids (B, T): every id > 0 counts once.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  weights = (weights > 0).astype(jnp.float32)
  ce = jnp.sum((log_z - target_logit) * weights)
  z = z_loss * jnp.sum(jnp.square(log_z) * weights)
  return ce, z, jnp.sum(weights)


def loss_weights(batch):
  """SFT batches carry `loss_mask` (assistant targets); pretraining counts every real token."""
  return batch['loss_mask'] if 'loss_mask' in batch else batch['segment_ids']


def next_token_loss(apply_fn, z_loss):
  """loss_sums(params, frozen, batch) for the engine: `apply_fn(params, frozen, batch)`
  returns logits; the objective is CE (+ z-loss) summed over weighted targets."""
  def loss_sums(params, frozen, batch):
    logits = apply_fn(params, frozen, batch)
    ce, z, count = token_loss_sums(logits, batch['targets'], loss_weights(batch), z_loss)
    return ce + z, {'loss': ce, 'count': count}
  return loss_sums
