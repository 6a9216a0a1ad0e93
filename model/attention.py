"""Causal, document-masked attention with grouped-query heads.

Four exact implementations of the same function:
- `reference`: plain einsum + softmax over the full T×S score matrix; the
  readable definition the tests compare against;
- `xla`: `jax.nn.dot_product_attention` with the dense mask (XLA's T×T scores);
- `blocked`: query blocks that only look at keys up to the block's end, so
  fully masked key blocks are never computed (about half the work of full causal
  attention; the fastest on CPU);
- `cudnn`: cuDNN flash attention in its packed mode (`model/attention_cudnn.py`):
  documents given as offsets and lengths, no T×T array at all (GPU, Hopper+);
- `splash`: JAX's Pallas Splash kernel with segment ids (`model/attention_splash.py`;
  TPU, tested on CPU in Pallas interpret mode).
Shapes: q (B, T, H, D), k/v (B, S, K, D) with H a multiple of K; the mask is
(B, T, S) booleans, True where a query may attend to a key.
`model.attention='auto'` picks per backend: `blocked` on CPU, `cudnn` on a GPU
that can run it (else `xla`), `splash` on TPU, `xla` elsewhere.
"""
import jax
import jax.numpy as jnp

from configs.errors import UserError
from model import attention_cudnn
from model import attention_splash

NEG_INF = -1e30  # finite, so a row can never become NaN through inf - inf


def make_mask(q_segment_ids, kv_segment_ids, q_index, kv_index):
  """Same document and not in the future. Indices are positions in the row/cache."""
  same_doc = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  causal = kv_index[:, None, :] <= q_index[:, :, None]
  return same_doc & causal


def reference(q, k, v, mask):
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, t, kv_heads, h // kv_heads, d)
  logits = jnp.einsum('btkgd,bskd->bkgts', q, k, preferred_element_type=jnp.float32)
  logits = logits * (d ** -0.5)
  logits = jnp.where(mask[:, None, None], logits, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum('bkgts,bskd->btkgd', probs, v)
  return out.reshape(b, t, h, d)


def xla(q, k, v, mask):
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=None)


def blocked(q, k, v, mask, block=64):
  """Exact causal attention by query blocks; assumes query i sits at key index i.

  Heads are moved in front once, so every block's two einsums are plain batched
  matmuls over contiguous memory (no per-block transposes).
  """
  b, t, h, d = q.shape
  if t <= block or t % block:
    return reference(q, k, v, mask)
  kv_heads = k.shape[2]
  qt = (q * d ** -0.5).reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, K, S, D)
  outs = []
  for start in range(0, t, block):
    end = start + block  # keys past `end` are in the future of every query here
    logits = jnp.einsum('bkgqd,bksd->bkgqs', qt[:, :, :, start:end], kt[:, :, :end],
                        preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None, None, start:end, :end], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    outs.append(jnp.einsum('bkgqs,bksd->bkgqd', probs, vt[:, :, :end]))
  return jnp.concatenate(outs, axis=3).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def resolve_kind(kind, dtype, head_dim):
  """The kernel `kind` means on this backend; a kernel it cannot run is a UserError."""
  if kind == 'auto':
    if jax.default_backend() == 'cpu':
      return 'blocked'
    if jax.default_backend() == 'tpu':
      return 'splash'
    return 'cudnn' if attention_cudnn.unsupported_reason(dtype, head_dim) is None else 'xla'
  reason = (attention_cudnn.unsupported_reason(dtype, head_dim) if kind == 'cudnn' else
            attention_splash.unsupported_reason() if kind == 'splash' else None)
  if reason:
    raise UserError(f"model.attention='{kind}' cannot run here: {reason}; "
                    "use model.attention='auto'")
  return kind


def self_attention_inputs(segment_ids, kind):
  """What `attend` takes for packed rows attending to themselves: the (B, T, T)
  mask, or for `cudnn` the documents' offsets and lengths (no T×T array)."""
  if kind == 'cudnn':
    return attention_cudnn.packed_segments(segment_ids)
  if kind == 'splash':
    return {'segment_ids': segment_ids}
  b, t = segment_ids.shape
  index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  return make_mask(segment_ids, segment_ids, index, index)


def attend(q, k, v, mask, kind='auto', block=64):
  """`mask` is what `self_attention_inputs` made for the resolved `kind`."""
  if kind == 'auto':
    kind = resolve_kind(kind, q.dtype, q.shape[-1])
  if kind == 'cudnn':
    if not isinstance(mask, dict):
      raise TypeError("attention 'cudnn' takes self_attention_inputs(segment_ids, 'cudnn')")
    return attention_cudnn.packed_attention(q, k, v, mask)
  if kind == 'splash':
    if not isinstance(mask, dict):
      raise TypeError("attention 'splash' takes self_attention_inputs(segment_ids, 'splash')")
    return attention_splash.splash_attention(q, k, v, mask['segment_ids'])
  if kind == 'blocked' and q.shape[1] == k.shape[1]:
    return blocked(q, k, v, mask, block)
  if kind == 'xla':
    return xla(q, k, v, mask)
  return reference(q, k, v, mask)
