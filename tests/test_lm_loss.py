"""The token cross-entropy's custom VJP equals autodiff of the plain formula."""
import jax
import jax.numpy as jnp
import numpy as np

from engine import lm_loss


def plain_objective(logits, targets, weights, z_loss):
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  w = (weights > 0).astype(jnp.float32)
  return jnp.sum((log_z - target) * w) + z_loss * jnp.sum(jnp.square(log_z) * w)


def project_objective(logits, targets, weights, z_loss):
  ce, z, _ = lm_loss.token_loss_sums(logits, targets, weights, z_loss)
  return ce + z


def batch(seed=0, shape=(3, 7, 41)):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=shape) * 4, jnp.float32)
  targets = jnp.asarray(rng.integers(0, shape[-1], shape[:2]), jnp.int32)
  weights = jnp.asarray(rng.integers(0, 3, shape[:2]), jnp.int32)  # segment ids: 0 = pad
  return logits, targets, weights


def test_loss_and_gradient_equal_autodiff_of_the_plain_formula_float32():
  logits, targets, weights = batch()
  for z_loss in (0.0, 1e-3):
    args = (targets, weights, z_loss)
    np.testing.assert_allclose(project_objective(logits, *args),
                               plain_objective(logits, *args), rtol=1e-6)
    ours = jax.jit(jax.grad(project_objective), static_argnums=3)(logits, *args)
    plain = jax.grad(plain_objective)(logits, *args)
    np.testing.assert_allclose(ours, plain, atol=1e-6)
  counts = lm_loss.token_loss_sums(logits, targets, weights, 0.0)[2]
  assert float(counts) == float(jnp.sum(weights > 0))


def test_bfloat16_logits_get_bfloat16_gradients_that_match_the_plain_formula():
  logits, targets, weights = batch(1)
  logits = logits.astype(jnp.bfloat16)
  ours = jax.grad(project_objective)(logits, targets, weights, 0.0)
  plain = jax.grad(plain_objective)(logits, targets, weights, 0.0)
  assert ours.dtype == jnp.bfloat16
  np.testing.assert_allclose(ours.astype(jnp.float32), plain.astype(jnp.float32), atol=1e-2)


def test_padding_positions_get_zero_gradient():
  logits, targets, weights = batch(2)
  grads = jax.grad(project_objective)(logits, targets, weights, 1e-3)
  pad = np.asarray(weights == 0)
  assert pad.any()
  assert float(jnp.max(jnp.abs(grads[pad]))) == 0.0
