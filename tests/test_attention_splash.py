"""Splash attention (TPU Pallas kernel) in interpret mode on CPU: the same function
as `reference` on packed rows with padding, grouped-query heads, under a mesh,
and inside the model; and the backend choice."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.packed_attention_check import packed_rows
from configs import tiny
from configs.errors import UserError
from model import attention
from model import attention_splash
from model import transformer


def inputs(seed, batch, length, heads, kv_heads, head_dim=64, max_docs=5):
  rng = np.random.default_rng(seed)
  seg = jnp.asarray(packed_rows(rng, batch, length, max_docs))
  q = jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(batch, length, kv_heads, head_dim)), jnp.float32)
          for _ in range(2))
  cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
  index = jnp.broadcast_to(jnp.arange(length), seg.shape)
  return q, k, v, seg, attention.make_mask(seg, seg, index, index), cot


def value_and_grads(fn, q, k, v, cot):
  return jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cot), argnums=(0, 1, 2))(
      q, k, v)


@pytest.mark.parametrize('heads,kv_heads', [(2, 2), (4, 2)])
def test_splash_equals_reference_forward_and_gradients(heads, kv_heads):
  q, k, v, seg, mask, cot = inputs(0, 3, 256, heads, kv_heads)  # row 0: all padding
  out = attention_splash.splash_attention(q, k, v, seg)
  np.testing.assert_allclose(out, attention.reference(q, k, v, mask), atol=2e-5)
  (_, ours), (_, ref) = (value_and_grads(lambda *a: attention_splash.splash_attention(*a, seg),
                                         q, k, v, cot),
                         value_and_grads(lambda *a: attention.reference(*a, mask), q, k, v, cot))
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, atol=5e-5)


def test_splash_under_a_mesh_shards_rows_and_heads_and_stays_exact():
  q, k, v, seg, mask, cot = inputs(1, 4, 128, 4, 2)
  mesh = jax.make_mesh((2, 2, 2), ('data', 'fsdp', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh):
    out = jax.jit(attention_splash.splash_attention)(q, k, v, seg)
    (_, grads) = jax.jit(lambda q, k, v: value_and_grads(
        lambda *a: attention_splash.splash_attention(*a, seg), q, k, v, cot))(q, k, v)
  np.testing.assert_allclose(out, attention.reference(q, k, v, mask), atol=2e-5)
  (_, ref) = value_and_grads(lambda *a: attention.reference(*a, mask), q, k, v, cot)
  for a, b in zip(grads, ref):
    np.testing.assert_allclose(a, b, atol=5e-5)


def test_auto_is_splash_on_tpu_and_splash_elsewhere_is_one_clear_error(monkeypatch):
  with pytest.raises(UserError, match="model.attention='splash' cannot run here: .*TPU"):
    attention.resolve_kind('splash', jnp.float32, 64)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  assert attention.resolve_kind('auto', jnp.bfloat16, 64) == 'splash'
  assert attention_splash.unsupported_reason(200) == (
      'the sequence length must be a multiple of 128 (it is 200)')


def test_model_with_splash_equals_model_with_reference(monkeypatch):
  monkeypatch.setattr(attention_splash, 'unsupported_reason', lambda *a: None)  # interpret
  rng = np.random.default_rng(2)
  seg = jnp.asarray(packed_rows(rng, 2, 128, 4))
  positions = jnp.broadcast_to(jnp.arange(128), seg.shape)
  tokens = jnp.asarray(rng.integers(0, 2048, seg.shape), jnp.int32)
  logits = {}
  for kind in ('splash', 'reference'):
    cfg = tiny.get_config().model
    cfg.attention = kind
    logits[kind] = transformer.Transformer(cfg, rngs=nnx.Rngs(0))(tokens, positions, seg)
  np.testing.assert_allclose(logits['splash'], logits['reference'], atol=1e-4)
