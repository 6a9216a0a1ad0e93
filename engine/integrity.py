"""Per-array fingerprints recorded in a checkpoint's metadata and checked on restore,
so damage that keeps file sizes (flipped bits, overwritten blocks) is caught before
anything trains or evaluates on it.

A fingerprint is two 32-bit sums over the array's raw bit patterns, computed on
device: s1 = Σ w_i and s2 = Σ w_i·(2i+1) (mod 2^32), where w_i is element i as an
unsigned integer. Integer sums are exact and order-free, so the numbers are the
same under any mesh, sharding or process count (a float sum is not); and since
2i+1 is odd, hence invertible mod 2^32, any change to a single element changes s2.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from configs.errors import UserError

_WORDS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


class DamagedCheckpoint(UserError):
  """A checkpoint's files cannot be read, or do not hold what was saved."""


def _sums(x):
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  words = jax.lax.bitcast_convert_type(x, _WORDS[x.dtype.itemsize]).astype(jnp.uint32)
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(words.ndim)):  # row-major element index, without a reshape
    index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, dim) * jnp.uint32(stride)
    stride *= words.shape[dim]
  return jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                    jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)])


_sums_jit = jax.jit(lambda leaves: [_sums(x) for x in leaves])


def fingerprint(tree, prefix=''):
  """{path: [s1, s2]} for every array leaf of `tree` (one jitted reduction)."""
  paths, leaves = zip(*jax.tree_util.tree_leaves_with_path(tree)) if jax.tree.leaves(tree) \
      else ((), ())
  if not leaves:
    return {}
  values = jax.device_get(_sums_jit(list(leaves)))
  return {prefix + jax.tree_util.keystr(p): [int(v) for v in np.asarray(s)]
          for p, s in zip(paths, values)}


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
    with open(os.path.join(step_dir, 'meta', 'metadata')) as f:
      return json.load(f).get('integrity') or {}
  except (OSError, ValueError):
    return {}
