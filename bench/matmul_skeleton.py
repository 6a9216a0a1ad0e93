"""The train step's dense matmuls alone: every projection, MLP and LM-head
matmul of the config, forward and backward, with only the residual adds and
products that connect them (no norms, RoPE, attention, softmax or optimizer).

Its time is the floor the step could reach with free elementwise work; timed
the same way in PyTorch (`torch_reference.time_matmul_skeleton`), it separates
the GEMM engines' speed from everything else in the comparison.
"""
import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import median_seconds
from model import transformer


def weight_shapes(model_cfg):
  """Per layer: q, k, v, o, gate, up, down; then the LM head."""
  m = model_cfg
  hd = transformer.head_dim(m)
  q, kv = m.num_heads * hd, m.num_kv_heads * hd
  layer = [(m.d_model, q), (m.d_model, kv), (m.d_model, kv), (q, m.d_model),
           (m.d_model, m.mlp_dim), (m.d_model, m.mlp_dim), (m.mlp_dim, m.d_model)]
  return layer * m.num_layers + [(m.d_model, m.vocab_size)]


def forward(x, weights, num_layers, matmul, tile):
  """The same dataflow in JAX and PyTorch: `matmul` and `tile` (repeat columns,
  for grouped-query k/v) are the framework's own."""
  for i in range(num_layers):
    wq, wk, wv, wo, wg, wu, wd = weights[7 * i:7 * i + 7]
    q, k, v = matmul(x, wq), matmul(x, wk), matmul(x, wv)
    x = x + matmul(q + tile(k + v, q.shape[-1] // k.shape[-1]), wo)
    x = x + matmul(matmul(x, wg) * matmul(x, wu), wd)
  return matmul(x, weights[-1])


def matmul_flops(config):
  tokens = config.train.batch_size * config.data.seq_len
  return 6 * tokens * sum(a * b for a, b in weight_shapes(config.model))


def make_inputs(config, seed=0):
  rng = np.random.default_rng(seed)
  tokens = config.train.batch_size * config.data.seq_len
  weights = [(rng.normal(size=s) * 0.02).astype(np.float32) for s in weight_shapes(config.model)]
  return rng.normal(size=(tokens, config.model.d_model)).astype(np.float32), weights


def _tile(a, reps):
  return a if reps == 1 else jnp.tile(a, (1, reps))


def measure(config, steps=5):
  x, weights = make_inputs(config)
  layers = config.model.num_layers
  # weights and x are arguments, never closure constants, so nothing is folded at compile time
  grads = jax.jit(jax.grad(lambda w, x: jnp.sum(forward(x, w, layers, jnp.matmul, _tile)),
                           argnums=(0, 1)))
  weights, x = [jnp.asarray(w) for w in weights], jnp.asarray(x)
  seconds = median_seconds(lambda: jax.block_until_ready(grads(weights, x)), steps)
  return {'matmul_skeleton_s': seconds,
          'matmul_skeleton_gflop_per_s': matmul_flops(config) / seconds / 1e9}
