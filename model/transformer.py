"""Decoder-only Transformer (LLaMA style) in Flax NNX.

token embedding → N × [RMSNorm → GQA attention with RoPE → residual;
RMSNorm → SwiGLU MLP → residual] → RMSNorm → LM head.
Activations stay 2-D, (batch·length, d_model), around the dense layers: on CPU
the 3-D↔2-D transposes XLA inserts otherwise cost more than the attention.
Params are created in `param_dtype` (float32); matmuls run in `dtype`.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import attention as attention_lib
from model.partitioning import constrain


def _param(rngs, shape, axes, std, dtype):
  init = jax.random.normal(rngs.params(), shape, dtype) * std
  return nnx.Param(init, logical_axes=axes)


def head_dim(cfg):
  return cfg.head_dim or cfg.d_model // cfg.num_heads


def resolve_auto_dtype(cfg):
  """model.dtype='auto' → 'float32' on CPU, 'bfloat16' on GPU/TPU, written back into
  `cfg` once a model is built (the backend is known by then, never earlier: a
  multi-process run must not start its backend before `jax.distributed`), so every
  later reader of `cfg.dtype` sees the concrete name."""
  if cfg.dtype == 'auto':
    cfg.dtype = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  return cfg


def rope_tables(positions, dim, theta, max_len):
  """(cos, sin) of the rotary angles, each (B, T, 1, dim/2), float32.

  Looked up in a table computed once on the host rather than evaluated on
  device: XLA fuses sin/cos into every consumer, so each layer's q and k, in
  the forward and again in the backward pass, re-evaluated them for every head
  (on CPU that cost more than the attention core). Positions must be below
  `max_len` (validated by every caller; out-of-range ones read NaN).
  """
  freq = theta ** (-np.arange(0, dim // 2, dtype=np.float64) * 2.0 / dim)
  angle = np.arange(max_len, dtype=np.float64)[:, None] * freq  # (max_len, D/2)
  cos = jnp.take(jnp.asarray(np.cos(angle), jnp.float32), positions, axis=0)
  sin = jnp.take(jnp.asarray(np.sin(angle), jnp.float32), positions, axis=0)
  return cos[:, :, None, :], sin[:, :, None, :]


def rope(x, tables):
  """Rotary embedding, half-split layout (as LLaMA in Hugging Face)."""
  cos, sin = tables
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nnx.Module):

  def __init__(self, dim, eps, param_dtype):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=('embed',))
    self.eps = eps

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg, rngs):
    d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, head_dim(cfg)
    pd, std = jnp.dtype(cfg.param_dtype), cfg.init_std
    out_std = std / (2 * cfg.num_layers) ** 0.5  # GPT-2: residual writes scaled by depth
    self.wq = _param(rngs, (d, h, hd), ('embed', 'heads', 'head_dim'), std, pd)
    self.wk = _param(rngs, (d, k, hd), ('embed', 'kv_heads', 'head_dim'), std, pd)
    self.wv = _param(rngs, (d, k, hd), ('embed', 'kv_heads', 'head_dim'), std, pd)
    self.wo = _param(rngs, (h, hd, d), ('heads', 'head_dim', 'embed'), out_std, pd)
    self.cfg = cfg

  def project_qkv(self, x, batch, length, rope_cs):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, head_dim(cfg)
    q = (x @ self.wq[...].astype(dtype).reshape(d, h * hd)).reshape(batch, length, h, hd)
    kk = (x @ self.wk[...].astype(dtype).reshape(d, k * hd)).reshape(batch, length, k, hd)
    v = (x @ self.wv[...].astype(dtype).reshape(d, k * hd)).reshape(batch, length, k, hd)
    q = constrain(rope(q, rope_cs), 'batch', 'length', 'act_heads', None)
    kk = constrain(rope(kk, rope_cs), 'batch', 'length', 'act_kv_heads', None)
    v = constrain(v, 'batch', 'length', 'act_kv_heads', None)
    return q, kk, v

  def project_out(self, out):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    b, t, h, hd = out.shape
    return out.reshape(b * t, h * hd) @ self.wo[...].astype(dtype).reshape(h * hd, cfg.d_model)

  def __call__(self, x, batch, length, rope_cs, mask):
    q, k, v = self.project_qkv(x, batch, length, rope_cs)
    kind = attention_lib.resolve_kind(self.cfg.attention, self.cfg.dtype, head_dim(self.cfg))
    out = attention_lib.attend(q, k, v, mask, kind, self.cfg.attention_block)
    return self.project_out(out)


class MLP(nnx.Module):
  """SwiGLU: down(silu(x·gate) * (x·up))."""

  def __init__(self, cfg, rngs):
    d, f, pd, std = cfg.d_model, cfg.mlp_dim, jnp.dtype(cfg.param_dtype), cfg.init_std
    self.w_gate = _param(rngs, (d, f), ('embed', 'mlp'), std, pd)
    self.w_up = _param(rngs, (d, f), ('embed', 'mlp'), std, pd)
    self.w_down = _param(rngs, (f, d), ('mlp', 'embed'), std / (2 * cfg.num_layers) ** 0.5, pd)
    self.dtype = jnp.dtype(cfg.dtype)

  def __call__(self, x):
    gate = constrain(x @ self.w_gate[...].astype(self.dtype), 'batch', 'act_mlp')
    up = constrain(x @ self.w_up[...].astype(self.dtype), 'batch', 'act_mlp')
    return (jax.nn.silu(gate) * up) @ self.w_down[...].astype(self.dtype)


class Block(nnx.Module):

  def __init__(self, cfg, rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, batch, length, rope_cs, mask):
    x = x + self.attn(self.attn_norm(x), batch, length, rope_cs, mask)
    x = constrain(x, 'batch', 'act_embed')
    x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, 'batch', 'act_embed')


def _save_dots_and_fused_attention(prim, *args, **params):
  """Keeps the dense layers' matmul outputs and the fused attention's forward
  outputs (its output and softmax statistics, ~1 GiB for llama_1b 4 × 4096), so
  the backward pass never reruns the attention forward (+2.8% tokens/s for
  llama_1b 4 × 4096 on an H100). On CPU no fused attention exists: plain 'dots'."""
  return (prim.name.startswith('dot_product_attention_fwd') or
          jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims(prim, *args, **params))


REMAT_POLICIES = {
    'full': None,  # recompute everything in the backward pass
    'dots': _save_dots_and_fused_attention,
}


class Transformer(nnx.Module):

  def __init__(self, cfg, rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = resolve_auto_dtype(cfg)
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'), cfg.init_std, pd)
    for i in range(cfg.num_layers):  # named attributes: checkpoint keys stay strings
      setattr(self, f'block_{i}', Block(cfg, rngs))
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'),
                            cfg.init_std, pd)

  def blocks(self):
    return [getattr(self, f'block_{i}') for i in range(self.cfg.num_layers)]

  def embed_tokens(self, tokens, positions=None, soft_prompt=None):
    """Token embeddings, (B·T, d_model). With a soft prompt (N, d_model), the
    tokens at positions 0..N-1 of each sequence are virtual: their embeddings
    are the soft prompt's rows (prompt tuning; the data puts N placeholders there)."""
    dtype = jnp.dtype(self.cfg.dtype)
    b, t = tokens.shape
    x = jnp.take(self.embed[...], tokens.reshape(-1), axis=0)
    if soft_prompt is not None:
      n = soft_prompt.shape[0]
      flat_positions = positions.reshape(-1)
      virtual = jnp.take(soft_prompt, jnp.clip(flat_positions, 0, n - 1), axis=0)
      x = jnp.where((flat_positions < n)[:, None], virtual.astype(x.dtype), x)
    return constrain(x.astype(dtype), 'batch', 'act_embed'), b, t

  def rope_tables(self, positions):
    return rope_tables(positions, head_dim(self.cfg), self.cfg.rope_theta, self.cfg.max_seq_len)

  def logits(self, x, batch, length):
    dtype = jnp.dtype(self.cfg.dtype)
    x = self.final_norm(x)
    head = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
    logits = (x @ head.astype(dtype)).reshape(batch, length, self.cfg.vocab_size)
    return constrain(logits, 'batch', 'length', 'act_vocab')

  def __call__(self, tokens, positions, segment_ids, soft_prompt=None):
    """tokens/positions/segment_ids: (B, T) int32 → logits (B, T, vocab)."""
    x, b, t = self.residual_stream(tokens, positions, segment_ids, soft_prompt)
    return self.logits(x, b, t)

  def hidden_states(self, tokens, positions, segment_ids, soft_prompt=None):
    """The final-normed hidden states (B, T, d_model) a scalar head reads (reward, value)."""
    x, b, t = self.residual_stream(tokens, positions, segment_ids, soft_prompt)
    return self.final_norm(x).reshape(b, t, self.cfg.d_model)

  def residual_stream(self, tokens, positions, segment_ids, soft_prompt=None):
    """(x after the last block as (B·T, d_model), B, T)."""
    x, b, t = self.embed_tokens(tokens, positions, soft_prompt)
    kind = attention_lib.resolve_kind(self.cfg.attention, self.cfg.dtype, head_dim(self.cfg))
    mask = attention_lib.self_attention_inputs(segment_ids, kind)  # a mask, or cuDNN's offsets
    rope_cs = self.rope_tables(positions)
    for block in self.blocks():
      if self.cfg.remat == 'none':
        x = block(x, b, t, rope_cs, mask)
      else:
        x = nnx.remat(lambda blk, h: blk(h, b, t, rope_cs, mask),
                      policy=REMAT_POLICIES[self.cfg.remat])(block, x)
    return x, b, t


def abstract_model(cfg):
  """The model with ShapeDtypeStruct leaves: shapes and axes, no memory."""
  return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def logical_axes(abstract):
  """Pure-dict tree of each param's logical axes."""
  state = nnx.state(abstract, nnx.Param)
  axes = jax.tree.map(lambda v: v.get_metadata()['logical_axes'], state,
                      is_leaf=lambda v: isinstance(v, nnx.Variable))
  return nnx.to_pure_dict(axes)


def count_params(cfg):
  state = nnx.state(abstract_model(cfg), nnx.Param)
  return sum(int(jnp.prod(jnp.array(x.shape))) for x in jax.tree.leaves(nnx.to_pure_dict(state)))
