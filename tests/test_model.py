"""The model: masks, an independent NumPy forward, attention kernels, presets."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from model import attention
from model import transformer


def _model_and_cfg(**overrides):
  cfg = tiny.get_config().model
  for key, value in overrides.items():
    cfg[key] = value
  return transformer.Transformer(cfg, rngs=nnx.Rngs(0)), cfg


def _inputs(b=2, t=64, split=24, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(8, 2048, (b, t)).astype(np.int32)
  segments = np.where(np.arange(t) < split, 1, 2)[None].repeat(b, 0).astype(np.int32)
  positions = np.where(np.arange(t) < split, np.arange(t), np.arange(t) - split)
  return tokens, positions[None].repeat(b, 0).astype(np.int32), segments


@pytest.mark.parametrize('kind', ['reference', 'blocked', 'xla'])
def test_future_and_other_documents_leave_logits_unchanged(kind):
  model, _ = _model_and_cfg(attention=kind, attention_block=16)
  tokens, positions, segments = _inputs()
  base = np.asarray(model(tokens, positions, segments))
  future = tokens.copy()
  future[:, 40:] = (future[:, 40:] + 7) % 2048
  changed = np.asarray(model(future, positions, segments))
  np.testing.assert_array_equal(changed[:, :40], base[:, :40])
  assert not np.array_equal(changed[:, 40:], base[:, 40:])
  earlier_doc = tokens.copy()
  earlier_doc[:, :24] = (earlier_doc[:, :24] + 11) % 2048  # the first document only
  changed = np.asarray(model(earlier_doc, positions, segments))
  np.testing.assert_array_equal(changed[:, 24:], base[:, 24:])


def test_attention_kernels_agree():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(2, 64, 4, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(2, 64, 2, 16)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(2, 64, 2, 16)), jnp.float32)
  _, _, seg = _inputs()
  idx = jnp.broadcast_to(jnp.arange(64), (2, 64))
  mask = attention.make_mask(jnp.asarray(seg), jnp.asarray(seg), idx, idx)
  ref = attention.reference(q, k, v, mask)
  np.testing.assert_allclose(attention.blocked(q, k, v, mask, 16), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(attention.xla(q, k, v, mask), ref, rtol=1e-5, atol=1e-6)


def _numpy_forward(params, cfg, tokens, positions, segments):
  """The same equations in plain NumPy (float64), written without Flax or JAX."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  b, t = tokens.shape
  h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.d_model // cfg.num_heads

  def rms(x, scale):
    return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + cfg.norm_eps) * scale

  def rope(x):
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2) / hd)
    ang = positions[..., None] * inv
    cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  x = p['embed'][tokens]
  allowed = (segments[:, :, None] == segments[:, None, :]) & np.tril(np.ones((t, t), bool))
  for i in range(cfg.num_layers):
    blk = p[f'block_{i}']
    y = rms(x, blk['attn_norm']['scale'])
    q = rope(np.einsum('btd,dhk->bthk', y, blk['attn']['wq']))
    k = rope(np.einsum('btd,dhk->bthk', y, blk['attn']['wk']))
    v = np.einsum('btd,dhk->bthk', y, blk['attn']['wv'])
    k, v = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)
    s = np.einsum('bqhk,bshk->bhqs', q, k) / np.sqrt(hd)
    s = np.where(allowed[:, None], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum('bhqs,bshk->bqhk', w, v)
    x = x + np.einsum('bqhk,hkd->bqd', o, blk['attn']['wo'])
    y = rms(x, blk['mlp_norm']['scale'])
    gate, up = y @ blk['mlp']['w_gate'], y @ blk['mlp']['w_up']
    x = x + (gate / (1 + np.exp(-gate)) * up) @ blk['mlp']['w_down']
  x = rms(x, p['final_norm']['scale'])
  head = p['embed'].T if cfg.tie_embeddings else p['lm_head']
  return x @ head


@pytest.mark.parametrize('tie', [False, True])
def test_forward_matches_independent_numpy(tie):
  model, cfg = _model_and_cfg(tie_embeddings=tie)
  tokens, positions, segments = _inputs(t=48)
  ours = np.asarray(model(tokens, positions, segments), np.float64)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  theirs = _numpy_forward(params, cfg, tokens, positions, segments)
  assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def closed_form_params(m):
  hd = m.head_dim or m.d_model // m.num_heads
  block = m.d_model * hd * (2 * m.num_heads + 2 * m.num_kv_heads) + 3 * m.d_model * m.mlp_dim
  block += 2 * m.d_model  # two RMSNorm scales
  head = 0 if m.tie_embeddings else m.d_model * m.vocab_size
  return m.vocab_size * m.d_model + m.num_layers * block + m.d_model + head


@pytest.mark.parametrize('preset,expected', [
    ('tiny', None), ('small', None), ('gpt2_124m', None),
    ('llama_1b', 1_235_814_400),  # Llama 3.2 1B's published count
    ('llama_7b', 6_738_415_616),  # Llama 2 7B's published count
])
def test_preset_param_counts_match_closed_form(preset, expected):
  cfg = importlib.import_module(f'configs.{preset}').get_config().model
  counted = transformer.count_params(cfg)  # jax.eval_shape: nothing allocated
  assert counted == closed_form_params(cfg)
  if expected:
    assert counted == expected


def test_flop_formula_against_hand_count():
  from engine import flops
  cfg = tiny.get_config().model
  # tiny: d 128, 4 heads of 32, 2 KV heads, mlp 384, vocab 2048, 2 layers, seq 128
  per_layer = 128 * 32 * (2 * 4 + 2 * 2) + 3 * 128 * 384  # 49152 + 147456
  matmul = 2 * per_layer + 128 * 2048
  assert flops.matmul_params(cfg) == matmul
  attention_flops = 12 * 2 * 4 * 32 * 128 / 2
  assert flops.train_flops_per_token(cfg, 128) == 6 * matmul + attention_flops
