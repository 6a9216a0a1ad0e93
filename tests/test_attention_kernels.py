"""Attention kernel choice and the cuDNN packed kernel's arguments (CPU), plus the
fused kernel against `reference` (GPU only, skipped elsewhere)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from configs.errors import UserError
from model import attention
from model import attention_cudnn
from model import transformer


def packed_rows(rng, batch, length, max_docs):
  """Rows of contiguous documents with ids 1, 2, ... and trailing padding (id 0)."""
  rows = np.zeros((batch, length), np.int32)
  for r in range(batch):
    docs = rng.integers(1, max_docs + 1)
    cuts = np.sort(rng.choice(np.arange(1, length), docs, replace=False))
    ids = np.searchsorted(cuts, np.arange(length), side='right')  # 0 .. docs
    ids = ids + 1  # documents 1 .. docs + 1; the last becomes padding on some rows
    if rng.random() < 0.6:
      ids[ids == ids.max()] = 0
    rows[r] = ids
  rows[0] = 0 if batch > 2 else rows[0]  # an all-padding row (a padded final batch)
  return rows


def test_packed_segments_rebuild_make_mask_on_random_packed_rows():
  rng = np.random.default_rng(0)
  for length, max_docs in ((16, 6), (64, 20), (128, 40)):
    seg = jnp.asarray(packed_rows(rng, 6, length, max_docs))
    index = jnp.broadcast_to(jnp.arange(length), seg.shape)
    expected = attention.make_mask(seg, seg, index, index)
    packed = attention_cudnn.packed_segments(seg, max_segments=max_docs + 2)
    assert not bool(packed['overflow'])
    rebuilt = attention_cudnn.packed_mask(packed['seqlens'], packed['offsets'], length)
    np.testing.assert_array_equal(np.asarray(rebuilt), np.asarray(expected))


def test_packed_segments_lengths_offsets_and_padding_slots():
  seg = jnp.asarray([[1, 1, 1, 2, 2, 0, 0, 0], [3, 3, 3, 3, 3, 3, 3, 3]], jnp.int32)
  packed = attention_cudnn.packed_segments(seg, max_segments=4)
  np.testing.assert_array_equal(packed['seqlens'], [[3, 2, 3, -1], [8, -1, -1, -1]])
  np.testing.assert_array_equal(packed['offsets'], [[0, 3, 5, -1, -1], [0, -1, -1, -1, -1]])
  assert not bool(packed['overflow'])


def test_packed_segments_flags_rows_with_more_documents_than_slots():
  seg = jnp.asarray([[1, 2, 3, 4, 5, 0], [1, 1, 1, 1, 1, 1]], jnp.int32)
  assert bool(attention_cudnn.packed_segments(seg, max_segments=5)['overflow'])
  assert not bool(attention_cudnn.packed_segments(seg, max_segments=6)['overflow'])


def test_auto_is_blocked_on_cpu_and_cudnn_there_is_one_clear_error():
  assert attention.resolve_kind('auto', jnp.float32, 32) == 'blocked'
  assert attention.resolve_kind('xla', jnp.float32, 32) == 'xla'
  with pytest.raises(UserError, match="model.attention='cudnn' cannot run here: .*cpu"):
    attention.resolve_kind('cudnn', jnp.bfloat16, 64)


def test_cudnn_on_cpu_fails_as_one_user_error_when_the_model_runs():
  cfg = tiny.get_config().model
  cfg.attention = 'cudnn'
  model = transformer.Transformer(cfg, rngs=__import__('flax').nnx.Rngs(0))
  tokens = jnp.zeros((1, 16), jnp.int32)
  with pytest.raises(UserError, match='cudnn'):
    model(tokens, jnp.broadcast_to(jnp.arange(16), (1, 16)), jnp.ones((1, 16), jnp.int32))


def test_auto_dtype_is_float32_on_cpu_and_resolved_once_in_the_config():
  cfg = tiny.get_config().model
  assert cfg.dtype == 'auto'
  model = transformer.Transformer(cfg, rngs=__import__('flax').nnx.Rngs(0))
  assert cfg.dtype == 'float32' and model.cfg.dtype == 'float32'
  assert model.embed[...].dtype == jnp.float32
  cfg.dtype = 'bfloat16'  # an explicit choice is kept
  assert transformer.resolve_auto_dtype(cfg).dtype == 'bfloat16'


def check_fused_against_reference(heads=8, kv_heads=2, head_dim=64, batch=2, length=256,
                                  seed=0, max_docs=6):
  """Max |fused - reference| of the output and of dq, dk, dv, in bf16, on packed rows
  with padding (reference in float32 from the same bf16 inputs)."""
  rng = np.random.default_rng(seed)
  seg = jnp.asarray(packed_rows(rng, batch, length, max_docs))
  index = jnp.broadcast_to(jnp.arange(length), seg.shape)
  mask = attention.make_mask(seg, seg, index, index)
  packed = attention.self_attention_inputs(seg, 'cudnn')
  q = jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.bfloat16)
  k, v = (jnp.asarray(rng.normal(size=(batch, length, kv_heads, head_dim)), jnp.bfloat16)
          for _ in range(2))
  cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v).astype(jnp.float32) * cot)

  fused = jax.jit(jax.value_and_grad(
      lambda q, k, v: loss(lambda *a: attention.attend(*a, packed, 'cudnn'), q, k, v),
      argnums=(0, 1, 2)))
  ref = jax.jit(jax.value_and_grad(
      lambda q, k, v: loss(lambda *a: attention.reference(
          *(x.astype(jnp.float32) for x in a), mask), q, k, v), argnums=(0, 1, 2)))
  out_f = attention.attend(q, k, v, packed, 'cudnn').astype(jnp.float32)
  out_r = attention.reference(q.astype(jnp.float32), k.astype(jnp.float32),
                              v.astype(jnp.float32), mask)
  (_, grads_f), (_, grads_r) = fused(q, k, v), ref(q, k, v)
  errors = {'out': float(jnp.max(jnp.abs(out_f - out_r)))}
  for name, gf, gr in zip(('dq', 'dk', 'dv'), grads_f, grads_r):
    scale = float(jnp.max(jnp.abs(gr))) or 1.0
    errors[name] = float(jnp.max(jnp.abs(gf.astype(jnp.float32) - gr))) / scale
  return errors


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs an NVIDIA GPU')
@pytest.mark.parametrize('heads,kv_heads', [(8, 8), (8, 2)])
def test_cudnn_packed_matches_reference_forward_and_gradients(heads, kv_heads):
  errors = check_fused_against_reference(heads=heads, kv_heads=kv_heads)
  assert errors['out'] < 3e-2, errors  # bf16 output, values of order 1
  assert max(errors['dq'], errors['dk'], errors['dv']) < 3e-2, errors  # relative to max
