"""A model, its train step and a fixed random batch: benchmarks time the step,
not the loader."""
import jax
import numpy as np

from data_pipeline.global_batch import batch_sharding
from engine import mesh as mesh_lib
from engine import optimizer
from engine import train_state
from engine import train_step


def synthetic_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, t = config.train.batch_size, config.data.seq_len
  tokens = rng.integers(8, config.model.vocab_size, (b, t + 1)).astype(np.int32)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
          'segment_ids': np.ones((b, t), np.int32),
          'positions': np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()}


def train_setup(config):
  """(spec, state, jitted step, batch on the mesh) for `config`."""
  mesh = mesh_lib.make_mesh(config.mesh)
  spec = train_state.ModelSpec(config.model, mesh)
  tx = optimizer.make_optimizer(config.train)
  state, shardings = train_state.create_train_state(spec, tx, config.seed)
  step_fn = train_step.make_train_step(spec, tx, optimizer.learning_rate_schedule(config.train),
                                       shardings, config.train)
  return spec, state, step_fn, jax.device_put(synthetic_batch(config), batch_sharding(mesh))
