"""In-process model helpers shared by test files. Imports jax: import it from test
modules only (conftest has set XLA_FLAGS for the 8 simulated devices by then)."""
import jax
import numpy as np

from engine import mesh as mesh_lib
from engine import train_state

# ln 2 in float32: the loss of a pair scored as a tie (DPO at step 0, a zero reward head).
LN2 = float(np.float32(np.log(2)))


def mesh_config(**mesh):
  """The tiny config at 8 rows × 64 tokens with no warmup (a non-zero learning rate at
  the first step), on a mesh of the given axis sizes (1 where not given)."""
  from configs import tiny
  config = tiny.get_config()
  config.train.batch_size = 8
  config.train.microbatches = 1  # tiny's 4 would leave 2 rows for 4 data ways
  config.data.seq_len = 64
  config.train.warmup_steps = 0
  for axis, size in {'data': 1, 'fsdp': 1, 'tensor': 1, **mesh}.items():
    config.mesh[axis] = size
  return config


def single_spec(config):
  """The model of `config` on a one-device mesh."""
  return train_state.ModelSpec(config.model, mesh_lib.make_mesh(config.mesh, jax.devices()[:1]))


def assert_trees_close(a, b, rtol, unread_zero=False):
  """Per leaf, max |a - b| <= rtol * max |a|: relative to each tensor's scale, not
  elementwise, since another reduction order (sharded sums) moves near-zero entries
  by more than rtol of themselves. A leaf of `a` that is all
  zero fails, unless `unread_zero`: then it is a leaf the loss does not read (a reward
  model's lm_head) and `b`'s must be zero too."""
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    scale = np.abs(x).max()
    if scale == 0 and unread_zero:
      assert not np.any(y), path
      continue
    assert scale > 0, path
    assert np.abs(x - y).max() <= rtol * scale, (path, np.abs(x - y).max(), scale)


def assert_updates_agree(a, b, lr):
  """Adam's first step is ~lr·sign(g): a gradient within float noise of 0 may flip."""
  diffs = np.concatenate([np.abs(x - y).ravel() for x, y in zip(jax.tree.leaves(a),
                                                                jax.tree.leaves(b))])
  assert np.mean(diffs <= 1e-3 * lr) >= 0.999
  assert diffs.max() <= 2 * lr
