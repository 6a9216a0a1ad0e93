"""Device mesh from config: (data, fsdp, tensor), with -1 filling the rest."""
import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from configs.errors import UserError
from model.partitioning import MESH_AXES


def mesh_shape(mesh_config, num_devices):
  sizes = [mesh_config[axis] for axis in MESH_AXES]
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise UserError(f'mesh {dict(zip(MESH_AXES, sizes))} does not divide {num_devices} '
                      'devices; choose axis sizes whose product divides the device count')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(f'mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but '
                    f'{num_devices} are available; make the product of mesh.data, mesh.fsdp '
                    'and mesh.tensor equal the device count (or use -1 for one axis)')
  return tuple(sizes)


def make_mesh(mesh_config, devices=None):
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, AssertionError, NotImplementedError):
    grid = np.array(devices).reshape(shape)  # CPU and odd topologies: plain order
  return Mesh(grid, MESH_AXES)


def check_divisible(config, mesh):
  """Every sharded dimension must split evenly over its mesh axes."""
  data_ways = mesh.shape['data'] * mesh.shape['fsdp']
  m, t, f = config.model, mesh.shape['tensor'], mesh.shape['fsdp']
  checks = [
      ('train.batch_size / train.microbatches', config.train.batch_size //
       config.train.microbatches, data_ways, 'mesh.data * mesh.fsdp'),
      ('model.num_heads', m.num_heads, t, 'mesh.tensor'),
      ('model.num_kv_heads', m.num_kv_heads, t, 'mesh.tensor'),
      ('model.mlp_dim', m.mlp_dim, t, 'mesh.tensor'),
      ('model.vocab_size', m.vocab_size, t, 'mesh.tensor'),
      ('model.d_model', m.d_model, f, 'mesh.fsdp'),
  ]
  for name, value, ways, axis in checks:
    if value % ways:
      raise UserError(f'{name}={value} is not divisible by {axis}={ways}; change one of them')
