"""cuDNN flash attention, exact for packed rows (causal, never across documents).

cuDNN's packed ("THD") mode takes each row's documents as (offset, length) pairs
instead of a mask: no T×T array exists in the forward or the backward pass.
`packed_segments` is the one place segment ids become those arguments; the tests
rebuild a mask from its output (`packed_mask`) and compare it with `make_mask`.

The kernel is JAX's internal `jax._src.cudnn.fused_attention_stablehlo` (there is
no public packed entry point), pinned and wrapped here only. Its key offsets were
wrong with fewer KV heads than query heads before jax 0.11.1 (jax PR #39521), so
older JAX gets K/V repeated to every query head.

A row with more documents than `max_segments` would be cut short by a fixed-size
argument; such a batch takes the fused kernel with a document mask instead
(`jax.nn.dot_product_attention(..., implementation='cudnn')`, exact, reads a
(B, 1, T, T) mask), chosen at run time with `lax.cond`, so no row is ever wrong.
"""
import jax
import jax.numpy as jnp

MAX_SEGMENTS = 8  # documents per row the packed call takes (a static shape). cuDNN runs
#   B × MAX_SEGMENTS sequences of up to T tokens each, so its cost grows with it (H100,
#   gpt2_124m: 16 slots 30.1% MFU, 64 slots 25.4%; 8 slots on rows that fit, 35.4%); a
#   batch with a fuller row takes the exact masked fallback (gpt2_124m: 33.5%)
_FIXED_GQA_OFFSETS = (0, 11, 1)  # first JAX with the GQA key-offset fix


def _jax_version():
  return tuple(int(p) for p in jax.__version__.split('.')[:3] if p.isdigit())


def packed_segments(segment_ids, max_segments=None):
  """(B, T) segment ids → the packed kernel's arguments.

  A segment is a maximal run of equal ids (padding, id 0, is a run too), so the
  result is exact when every id occupies one contiguous run, as the pipeline's
  packing guarantees. Returns a dict: `seqlens` (B, M) run lengths, `offsets`
  (B, M + 1) run starts, both -1 past a row's last run; `overflow`, a scalar
  bool, True when some row has more than M runs; `segment_ids` for the fallback.
  """
  b, t = segment_ids.shape
  m = max_segments or MAX_SEGMENTS
  starts = jnp.concatenate([jnp.ones((b, 1), bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  run = jnp.cumsum(starts, axis=1, dtype=jnp.int32) - 1  # run index of every token
  runs = run[:, -1] + 1
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
  slot = jnp.where(starts & (run < m), run, m + 1)  # m + 1 is out of bounds: dropped
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  offsets = jnp.full((b, m + 1), -1, jnp.int32).at[rows, slot].set(positions, mode='drop')
  lengths = jnp.zeros((b, m), jnp.int32).at[rows, jnp.where(run < m, run, m)].add(
      1, mode='drop')
  seqlens = jnp.where(jnp.arange(m)[None, :] < runs[:, None], lengths, -1)
  return {'seqlens': seqlens, 'offsets': offsets, 'overflow': jnp.any(runs > m),
          'segment_ids': segment_ids}


def packed_mask(seqlens, offsets, length):
  """The (B, T, T) mask the packed kernel applies: same segment and causal."""
  pos = jnp.arange(length)
  starts, lens = offsets[:, :-1], seqlens
  inside = ((pos[None, None, :] >= starts[:, :, None]) &
            (pos[None, None, :] < (starts + lens)[:, :, None]) & (lens[:, :, None] > 0))
  which = jnp.where(jnp.any(inside, axis=1), jnp.argmax(inside, axis=1), -1)  # (B, T)
  same = (which[:, :, None] == which[:, None, :]) & (which[:, :, None] >= 0)
  return same & (pos[None, None, :] <= pos[None, :, None])


def _repeat_kv(x, heads):
  return x if x.shape[2] == heads else jnp.repeat(x, heads // x.shape[2], axis=2)


def packed_attention(q, k, v, packed):
  """q (B, T, H, D), k/v (B, T, K, D) bf16/fp16 → (B, T, H, D), exact for packed rows."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn  # internal: pinned here
  if _jax_version() < _FIXED_GQA_OFFSETS:
    k, v = _repeat_kv(k, q.shape[2]), _repeat_kv(v, q.shape[2])
  seqlens, offsets = packed['seqlens'], packed['offsets']

  def fused(q, k, v):
    return cudnn.dot_product_attention(
        q, k, v, q_seqlen=seqlens, kv_seqlen=seqlens, q_offsets=offsets, kv_offsets=offsets,
        scale=q.shape[-1] ** -0.5, mask_type=cudnn.MaskType.PADDING_CAUSAL, qkv_layout='BTNH')

  def masked(q, k, v):
    return document_masked_attention(q, k, v, packed['segment_ids'])

  branch = packed.get('branch')  # set by a caller that already chose per batch
  if branch is not None:
    return (masked if branch == 'masked' else fused)(q, k, v)
  return jax.lax.cond(packed['overflow'], masked, fused, q, k, v)


def document_masked_attention(q, k, v, segment_ids):
  """cuDNN's fused kernel with a (B, 1, T, T) same-document mask and `is_causal`."""
  same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=same_doc[:, None], is_causal=True,
                                      implementation='cudnn')


def unsupported_reason(dtype, head_dim):
  """Why the packed kernel cannot run here (None when it can)."""
  if jax.default_backend() != 'gpu':
    return f'it needs an NVIDIA GPU and this backend is {jax.default_backend()}'
  device = jax.devices()[0]
  capability = getattr(device, 'compute_capability', '0')
  if float(capability) < 9.0:
    return f'its packed mode needs a Hopper or newer GPU (this one is sm_{capability})'
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f'it runs in bfloat16/float16 and model.dtype is {jnp.dtype(dtype).name}'
  if head_dim % 8 or head_dim > 256:
    return f'head_dim must be a multiple of 8 and at most 256 (it is {head_dim})'
  return None
