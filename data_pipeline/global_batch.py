"""Host-local numpy batches → one global jax.Array sharded over the batch axes."""
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from configs.errors import UserError

BATCH_AXES = ('data', 'fsdp')  # rows are split over every data-parallel mesh axis


def batch_sharding(mesh):
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def make_global_batch(local_batch, mesh):
  """Each process passes its own rows; the result spans all processes' rows."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for name, value in local_batch.items()}


def process_row_block(mesh, global_rows):
  """(index, count) of the contiguous block of global batch rows this process
  holds; data shards are assigned by it, so row order never depends on how
  processes are numbered."""
  sharding = batch_sharding(mesh)
  rows = {(idx[0].start or 0, idx[0].stop or global_rows) for idx in
          sharding.addressable_devices_indices_map((global_rows, 1)).values()}
  local_rows = sum(stop - start for start, stop in rows)
  if local_rows * jax.process_count() != global_rows:
    raise UserError('this mesh gives processes overlapping batch rows (a tensor or fsdp axis '
                    'spans hosts while data does not); order the mesh so that data and fsdp '
                    'split across processes')
  return min(start for start, _ in rows) // local_rows, jax.process_count()
