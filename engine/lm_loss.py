"""Next-token cross-entropy over weighted target tokens: the objective of
pretraining (weight = real token) and of supervised fine-tuning (weight =
assistant token). Returned as sums, so microbatches and shards add up exactly."""
import jax
import jax.numpy as jnp


def _normalizer_and_target(logits, targets):
  x = logits.astype(jnp.float32)  # fused into the reductions: no float32 copy in memory
  peak = jnp.max(x, axis=-1)
  log_z = peak + jnp.log(jnp.sum(jnp.exp(x - peak[..., None]), axis=-1))
  is_target = jnp.arange(x.shape[-1], dtype=targets.dtype) == targets[..., None]
  return log_z, jnp.sum(jnp.where(is_target, x, 0.0), axis=-1)


@jax.custom_vjp
def normalizer_and_target(logits, targets):
  """(log Σ exp(logits), the target's logit), both float32 (B, T), from logits in
  their compute dtype.

  A custom VJP, because autodiff of logsumexp and take_along_axis made XLA keep
  float32 (B, T, V) copies of the logits (the convert, exp and one-hot scatter),
  ~8 ms of a 42 ms gpt2_124m step on an H100; here the residuals are the logits
  as they are and log Z, and the backward pass is one elementwise pass over the
  logits: softmax · dlog_z + one_hot · dtarget.
  """
  return _normalizer_and_target(logits, targets)


def _forward(logits, targets):
  log_z, target = _normalizer_and_target(logits, targets)
  return (log_z, target), (logits, targets, log_z)


def _backward(residuals, cotangents):
  logits, targets, log_z = residuals
  d_log_z, d_target = cotangents
  x = logits.astype(jnp.float32)
  is_target = jnp.arange(x.shape[-1], dtype=targets.dtype) == targets[..., None]
  d_logits = (jnp.exp(x - log_z[..., None]) * d_log_z[..., None] +
              jnp.where(is_target, d_target[..., None], 0.0))
  return d_logits.astype(logits.dtype), None


normalizer_and_target.defvjp(_forward, _backward)


def token_loss_sums(logits, targets, weights, z_loss):
  """(ce sum, z-loss term, weight sum) over the positions with weight > 0.

  `weights` may also be the segment ids (B, T): every id > 0 counts once.
  """
  log_z, target_logit = normalizer_and_target(logits, targets)
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
