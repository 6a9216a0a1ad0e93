"""INT8 weight-only quantization for CPU inference.

Every linear weight is stored as symmetric int8 with one float32 scale per
output channel (max |w| over the input axes / 127); norms and the embedding
table stay float32. Dequantization happens inside the jitted computation, so
the resident weights are int8 (about 4x smaller) and the matmuls stay float32.
"""
import jax
import jax.numpy as jnp
import numpy as np

# How many leading axes of each linear weight are input axes.
INPUT_AXES = {'wq': 1, 'wk': 1, 'wv': 1, 'wo': 2, 'w_gate': 1, 'w_up': 1, 'w_down': 1,
              'lm_head': 1}


def _quantize(w, input_axes):
  w = np.asarray(w, np.float32)
  scale = np.max(np.abs(w), axis=tuple(range(input_axes)), keepdims=True) / 127.0
  scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
  return {'int8': np.clip(np.round(w / scale), -127, 127).astype(np.int8), 'scale': scale}


def quantize(params):
  """Params → the same tree with linear weights as {'int8', 'scale'} dicts."""
  def walk(tree):
    out = {}
    for key, value in tree.items():
      if isinstance(value, dict):
        out[key] = walk(value)
      elif key in INPUT_AXES:
        out[key] = _quantize(value, INPUT_AXES[key])
      else:
        out[key] = np.asarray(value)
    return out
  return walk(params)


def is_quantized(node):
  return isinstance(node, dict) and set(node) == {'int8', 'scale'}


def dequantize(qparams, dtype=jnp.float32):
  """Inverse of `quantize` (inside jit: a transient float copy per call)."""
  return jax.tree.map(lambda n: n['int8'].astype(dtype) * n['scale'] if is_quantized(n) else n,
                      qparams, is_leaf=is_quantized)


def weight_bytes(params):
  """Bytes of the linear weights as stored (from shapes: nothing is copied)."""
  total = 0
  def nbytes(x):
    return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
  def walk(tree):
    nonlocal total
    for key, value in tree.items():
      if is_quantized(value):
        total += nbytes(value['int8']) + nbytes(value['scale'])
      elif isinstance(value, dict):
        walk(value)
      elif key in INPUT_AXES:
        total += nbytes(value)
  walk(params)
  return total
