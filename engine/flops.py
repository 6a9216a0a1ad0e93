"""Model FLOPs per token, counted as MaxText does, and the peak MFU is measured against."""
import time

import jax
import jax.numpy as jnp


# Dense bf16 TFLOP/s per device from the vendors' datasheets (H100/H200 SXM, A100).
NOMINAL_PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'GH200': 989.0, 'A100': 312.0}


def nominal_peak(device_kind, override_tflops=0.0):
  """FLOP/s: the override, else the device kind's datasheet peak, else None."""
  if override_tflops:
    return override_tflops * 1e12
  for name, tflops in NOMINAL_PEAK_TFLOPS.items():
    if name.lower() in device_kind.lower().replace('-', ' ').split():
      return tflops * 1e12
  return None


def peak_flops(peak_tflops=0.0):
  """MFU's denominator per device: `train.peak_tflops` when set, else the datasheet
  peak of a known accelerator, else a matmul measured now (CPUs have no datasheet
  number that XLA reaches)."""
  device = jax.devices()[0]
  known = nominal_peak(device.device_kind if device.platform != 'cpu' else '', peak_tflops)
  return known or measure_matmul_peak()


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
