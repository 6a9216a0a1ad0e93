"""In-process model helpers shared by test files. Imports jax: import it from test
modules only (conftest has set XLA_FLAGS for the 8 simulated devices by then)."""
import jax
import numpy as np

from engine import mesh as mesh_lib
from engine import train_state

# ln 2 in float32: the loss of a pair scored as a tie (DPO at step 0, a zero reward head).
LN2 = float(np.float32(np.log(2)))


def single_spec(config):
  """The model of `config` on a one-device mesh."""
  return train_state.ModelSpec(config.model, mesh_lib.make_mesh(config.mesh, jax.devices()[:1]))
