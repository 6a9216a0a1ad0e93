"""Packed rows for attention tests, and the fused kernel against `reference`
(forward and gradients): shared by tests/test_attention_kernels.py and
bench/gpu_check.py, which runs it on the GPU."""
import jax
import jax.numpy as jnp
import numpy as np

from model import attention


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
