"""Muon (`train.optimizer='muon'`): which params it orthogonalises, its first update
against a NumPy Newton-Schulz, and the multi-axis kernels read as the matrices they are."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax import contrib

from configs import tiny
from engine import optimizer
from model import transformer
from flax import nnx

# Keller Jordan's quintic Newton-Schulz coefficients (optax's default 'muon' preset).
NS_COEFFS = (3.4445, -4.775, 2.0315)


def _muon_config(**train):
  config = tiny.get_config()
  config.train.optimizer = 'muon'
  config.train.warmup_steps = 0  # the first update at the peak rate
  config.train.grad_clip = 0.0
  config.train.weight_decay = 0.0
  for key, value in train.items():
    config.train[key] = value
  return config


def _params(config):
  abstract = nnx.state(transformer.abstract_model(config.model), nnx.Param)
  return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), nnx.to_pure_dict(abstract))


def _newton_schulz(g, steps, preconditioning='frobenius'):
  """Muon's orthogonalisation in float64, on the wide orientation: X <- aX + (bA + cA²)X
  with A = XXᵀ, after Frobenius normalisation, or with AOL's rescaling folded into the
  first iteration (rows scaled by 1/sqrt of A's absolute row sums)."""
  x = np.asarray(g, np.float64)
  wide = x.shape[0] <= x.shape[1]
  x = x if wide else x.T
  a, b, c = NS_COEFFS
  if preconditioning == 'frobenius':
    x = x / (np.linalg.norm(x) + 1e-8)
  for i in range(steps):
    gram = x @ x.T
    if preconditioning == 'aol' and i == 0:
      scale = 1 / np.sqrt(np.maximum(np.abs(gram).sum(axis=-1), 1e-8))[:, None]
      x, gram = x * scale, gram * scale * scale.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x if wide else x.T


def test_kernels_go_to_muon_and_vocabulary_tables_and_vectors_to_adamw():
  dims = optimizer.muon_dimension_numbers(_params(tiny.get_config()))
  block = dims['block_0']
  assert dims['embed'] is None and dims['lm_head'] is None
  assert dims['final_norm']['scale'] is None and block['attn_norm']['scale'] is None
  for name in ('wq', 'wk', 'wv'):  # (embed, heads, head_dim): embed -> heads·head_dim
    assert block['attn'][name] == contrib.MuonDimensionNumbers(0, (1, 2))
  assert block['attn']['wo'] == contrib.MuonDimensionNumbers((0, 1), 2)
  for name in ('w_gate', 'w_up', 'w_down'):
    assert block['mlp'][name] == contrib.MuonDimensionNumbers(0, 1)


@pytest.mark.parametrize('preconditioning,steps', [('frobenius', 3), ('aol', 2)])
def test_first_update_is_the_orthogonalised_gradient_and_adamw_elsewhere(preconditioning, steps):
  config = _muon_config(muon_ns_steps=steps, muon_preconditioning=preconditioning,
                        muon_learning_rate=0.005, learning_rate=4e-3)
  params = _params(config)
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  tx = optimizer.make_optimizer(config.train)
  updates, _ = tx.update(grads, tx.init(params), params)

  # A (128, 384) kernel: -lr · sqrt(max(1, fan_out/fan_in)) · NS(g) on the first step
  # (Nesterov momentum at step 1 is a positive multiple of g; NS normalises it away).
  g = np.asarray(grads['block_0']['mlp']['w_up'])
  want = -0.005 * np.sqrt(384 / 128) * _newton_schulz(g, steps, preconditioning)
  got = np.asarray(updates['block_0']['mlp']['w_up'])
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-7)
  # The tall (384, 128) kernel is orthogonalised on its transpose, with scale 1.
  g = np.asarray(grads['block_0']['mlp']['w_down'])
  np.testing.assert_allclose(np.asarray(updates['block_0']['mlp']['w_down']),
                             -0.005 * _newton_schulz(g, steps, preconditioning),
                             rtol=2e-4, atol=2e-7)
  # The embedding table gets AdamW's first step at the AdamW rate, with Nesterov momentum
  # as optax's Muon runs its AdamW half: -lr · (1 + b1/(1 + b1)) · g / (|g| + eps).
  b1, g = config.train.b1, np.asarray(grads['embed'], np.float64)
  want = -4e-3 * (1 + b1 / (1 + b1)) * g / (np.abs(g) + config.train.eps)
  np.testing.assert_allclose(np.asarray(updates['embed']), want, rtol=1e-4)


def test_multi_axis_kernels_update_as_their_matrices():
  """wq (embed, heads, head_dim) moves as the (embed, heads·head_dim) matrix it
  multiplies by; wo (heads, head_dim, embed) as (heads·head_dim, embed)."""
  config = _muon_config(muon_ns_steps=5, muon_preconditioning='frobenius')
  params = _params(config)
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  tx = optimizer.make_optimizer(config.train)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = config.train.muon_learning_rate
  attn_u, attn_g = updates['block_1']['attn'], grads['block_1']['attn']
  for name in ('wq', 'wk', 'wo'):
    g = np.asarray(attn_g[name])
    matrix = g.reshape(g.shape[0], -1) if name != 'wo' else g.reshape(-1, g.shape[-1])
    fan_in, fan_out = matrix.shape
    want = -lr * np.sqrt(max(1, fan_out / fan_in)) * _newton_schulz(matrix, 5)
    np.testing.assert_allclose(np.asarray(attn_u[name]).reshape(matrix.shape), want,
                               rtol=2e-4, atol=2e-7)
  # Orthogonalised: the update's singular values sit near one lr step (the quintic
  # iteration lands them in about [0.7, 1.2], not on 1), except the few smallest of a
  # square random gradient, too small for 5 iterations to lift.
  singular = np.linalg.svd(np.asarray(attn_u['wq']).reshape(128, 128) / -lr, compute_uv=False)
  assert np.mean((singular > 0.6) & (singular < 1.25)) >= 0.95 and singular.max() < 1.25


def test_ppo_refuses_muon_with_one_line():
  from configs.errors import UserError
  from posttrain import ppo
  config = _muon_config()
  with pytest.raises(UserError, match='PPO trains with adamw only'):
    ppo.two_part_optimizer(config.train, critic_lr_ratio=1.0)


def test_post_training_stages_fine_tune_with_adamw():
  from configs import stages
  config = tiny.get_config()
  assert config.train.optimizer == 'muon'
  for stage in stages.STAGES:
    assert stages.for_stage(config, stage).train.optimizer == 'adamw', stage
