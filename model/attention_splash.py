"""Splash attention (JAX's Pallas TPU kernel), exact for packed rows: causal, and a
query sees only keys with its segment id (padding, id 0, sees padding, as in
`attention.make_mask`). No T×T array; fully masked blocks are skipped.

Grouped-query heads run as Splash's multi-query kernel once per KV head (its G
query heads share that head's K/V). Under a mesh the kernel runs inside
`shard_map` over the rows (data, fsdp) and KV heads (tensor): a Pallas call has
no partitioning rule of its own, and rows and heads are independent.

TPU only; elsewhere it runs in Pallas interpret mode, which the CPU tests use to
compare it with `reference` (forward and gradients).
"""
import jax
import jax.numpy as jnp

from model import partitioning

_BLOCK = 512  # Splash's default block; rows shorter than it use one block of their length


def unsupported_reason(length=None):
  """Why Splash cannot run here (None when it can)."""
  if jax.default_backend() != 'tpu':
    return f'it needs a TPU and this backend is {jax.default_backend()}'
  if length is not None and length % 128:
    return f'the sequence length must be a multiple of 128 (it is {length})'
  return None


def _kernel(length, group, interpret):  # not cached: its constants belong to one trace
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  block = min(_BLOCK, length)
  if length % block:
    raise ValueError(f'Splash attention: length {length} is not a multiple of {block}')
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  mask = sm.MultiHeadMask([sm.CausalMask((length, length))] * group)
  with jax.ensure_compile_time_eval():  # its block tables are constants, never tracers
    kernel = sk.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                interpret=interpret)
  return kernel, sk.SegmentIds


def _local(q, k, v, segment_ids):
  """One shard: q (B, T, H, D), k/v (B, T, K, D), segment_ids (B, T) → (B, T, H, D)."""
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  kernel, segment_type = _kernel(t, h // kv_heads, jax.default_backend() != 'tpu')
  q = (q * d ** -0.5).reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, K, T, D)

  def row(q, k, v, seg):  # q (K, G, T, D), k/v (K, T, D): one call per KV head
    ids = segment_type(q=seg, kv=seg)
    return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(q, k, v)

  out = jax.vmap(row)(q, k, v, segment_ids)  # (B, K, G, T, D)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(v.dtype)


def splash_attention(q, k, v, segment_ids):
  """q (B, T, H, D), k/v (B, T, K, D), segment_ids (B, T) → (B, T, H, D)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return _local(q, k, v, segment_ids)
  heads = partitioning.spec(('batch', 'length', 'act_heads', None))
  kv_heads = partitioning.spec(('batch', 'length', 'act_kv_heads', None))
  rows = partitioning.spec(('batch', 'length'))
  return jax.shard_map(_local, in_specs=(heads, kv_heads, kv_heads, rows), out_specs=heads,
                       check_vma=False)(q, k, v, segment_ids.astype(jnp.int32))
