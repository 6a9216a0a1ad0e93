"""Model FLOPs per token, counted as MaxText does, and a measured matmul peak."""
import time

import jax
import jax.numpy as jnp


def matmul_params(model_cfg):
  """Weights that take part in a matmul per token: every block's projections and
  the LM head (the embedding lookup is a gather, not a matmul)."""
  m = model_cfg
  hd = m.head_dim or m.d_model // m.num_heads
  attn = m.d_model * hd * (2 * m.num_heads + 2 * m.num_kv_heads)
  mlp = 3 * m.d_model * m.mlp_dim
  return m.num_layers * (attn + mlp) + m.d_model * m.vocab_size


def train_flops_per_token(model_cfg, seq_len):
  """6·N for the matmuls (forward 2 + backward 4) plus causal attention.

  Attention per token and layer: QKᵀ and AV, 2·2·seq·heads·head_dim forward,
  ×3 with the backward pass, halved because the mask is causal.
  """
  m = model_cfg
  hd = m.head_dim or m.d_model // m.num_heads
  attention = 12 * m.num_layers * m.num_heads * hd * seq_len / 2
  return 6 * matmul_params(m) + attention


def measure_matmul_peak(size=2048, repeats=5, dtype=jnp.float32):
  """FLOP/s of one device on a large square matmul (best of `repeats`)."""
  a = jnp.ones((size, size), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best
