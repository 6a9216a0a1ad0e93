"""Per-array fingerprints recorded in a checkpoint's metadata and checked on restore,
so damage that keeps file sizes (flipped bits, overwritten blocks) is caught before
anything trains or evaluates on it.

A fingerprint is two 32-bit sums over the array's raw bit patterns, computed on
device: with w the elements as unsigned integers and r the row (all axes but the
last), s1 = Σ w and s2 = Σ_r (2r+1)·Σ_c w_rc (mod 2^32). Integer sums are exact and
order-free, so the numbers are the same under any mesh, sharding or process count
(a float sum is not); any change to one element changes s1, and rows moved or
swapped change s2. One pass over the data (row sums, then two tiny sums).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from configs.errors import UserError
from engine import paths

# The metadata key; a new formula takes a new key (older records are then not checked).
META_KEY = 'array_fingerprints_v2'
_WORDS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


class DamagedCheckpoint(UserError):
  """A checkpoint's files cannot be read, or do not hold what was saved."""


def _sums(x):
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  words = jax.lax.bitcast_convert_type(x, _WORDS[x.dtype.itemsize]).astype(jnp.uint32)
  # Materialised apart: fused into the reduction, XLA:CPU's integer sum runs ~5x slower.
  words = jax.lax.optimization_barrier(words)
  if words.ndim == 0:
    words = words[None]
  rows = jnp.sum(words, axis=-1, dtype=jnp.uint32)
  index = jnp.zeros(rows.shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(rows.ndim)):  # row-major row index, without a reshape
    index = index + jax.lax.broadcasted_iota(jnp.uint32, rows.shape, dim) * jnp.uint32(stride)
    stride *= rows.shape[dim]
  return jnp.stack([jnp.sum(rows, dtype=jnp.uint32),
                    jnp.sum(rows * (2 * index + 1), dtype=jnp.uint32)])


_sums_jit = jax.jit(lambda leaves: [_sums(x) for x in leaves])


def _host_sums(x):
  """_sums in numpy, for arrays already in host memory (CPU devices, numpy leaves):
  there XLA's integer reductions run several times slower than numpy's."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  a = np.asarray(x)
  if a.dtype == np.bool_:
    a = a.view(np.uint8)
  words = a.view(np.dtype(_WORDS[a.dtype.itemsize]))
  if a.dtype.itemsize == 8:
    words = words.reshape(a.shape + (2,))
  words = words.reshape(-1, words.shape[-1] if words.ndim else 1)
  rows = np.add.reduce(words, axis=-1, dtype=np.uint32)
  return [int(np.add.reduce(rows, dtype=np.uint32)),
          int(np.add.reduce(rows * (2 * np.arange(len(rows), dtype=np.uint32) + 1),
                            dtype=np.uint32))]


def _on_host(x):
  return not isinstance(x, jax.Array) or (
      x.is_fully_addressable and all(d.platform == 'cpu' for d in x.devices()))


def fingerprint(tree, prefix=''):
  """{path: [s1, s2]} for every array leaf of `tree` (one jitted reduction, or numpy
  where the arrays already live in host memory; both give the same numbers)."""
  pairs = jax.tree_util.tree_leaves_with_path(tree)
  if not pairs:
    return {}
  paths, leaves = zip(*pairs)
  if all(_on_host(x) for x in leaves):
    values = [_host_sums(x) for x in leaves]
  else:
    values = [[int(v) for v in np.asarray(s)] for s in jax.device_get(_sums_jit(list(leaves)))]
  return {prefix + jax.tree_util.keystr(p): v for p, v in zip(paths, values)}


def verify(tree, recorded, what, prefix=''):
  """Raises DamagedCheckpoint when an array of `tree` differs from its recorded
  fingerprint. Checkpoints saved before fingerprints existed pass."""
  if not recorded:
    return
  actual = fingerprint(tree, prefix)
  bad = [path for path, sums in actual.items()
         if path in recorded and list(recorded[path]) != sums]
  if bad:
    raise DamagedCheckpoint(f'{what} does not hold what was saved: {len(bad)} array(s) differ '
                            f'from their fingerprints (first: {bad[0]}); its files were changed '
                            'or damaged after the save')


def recorded(step_dir):
  """The fingerprints in a step directory's metadata ({} when none or unreadable)."""
  try:
    return json.loads(paths.read_text(os.path.join(step_dir, 'meta', 'metadata'))).get(
        META_KEY) or {}
  except (OSError, ValueError):
    return {}
