"""Host-local numpy batches → one global jax.Array sharded over the batch axes."""
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

BATCH_AXES = ('data', 'fsdp')  # rows are split over every data-parallel mesh axis


def batch_sharding(mesh):
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def make_global_batch(local_batch, mesh):
  """Each process passes its own rows; the result spans all processes' rows."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for name, value in local_batch.items()}
