"""`run.py describe`: param count, FLOPs and per-device memory of a config,
from `jax.eval_shape` (nothing is allocated, so a 7B model describes on a laptop)."""

import jax

from model import transformer
from engine import flops
from engine.mesh import mesh_shape


def describe(config, num_devices=None):
  num_devices = num_devices or jax.device_count()
  model = config.model
  params = transformer.count_params(model)
  shape = dict(zip(('data', 'fsdp', 'tensor'), mesh_shape(config.mesh, num_devices)))
  param_shards = shape['fsdp'] * shape['tensor']  # params split over fsdp × tensor
  bytes_param = 4  # float32 params; Adam mu and nu are float32 too
  state_bytes = params * bytes_param * 3 / param_shards  # params + mu + nu
  grad_bytes = params * 4 / param_shards
  rows = config.train.batch_size // config.train.microbatches // (shape['data'] * shape['fsdp'])
  act_bytes_per_layer = rows * config.data.seq_len * model.d_model * jax.numpy.dtype(
      model.dtype).itemsize
  saved_per_layer = {'none': 12 + 3 * model.mlp_dim / model.d_model, 'dots': 6, 'full': 1}
  activation_bytes = act_bytes_per_layer * model.num_layers * saved_per_layer[model.remat]
  return {
      'params': params,
      'matmul_params': flops.matmul_params(model),
      'train_flops_per_token': flops.train_flops_per_token(model, config.data.seq_len),
      'mesh': shape,
      'per_device_state_gib': state_bytes / 2**30,
      'per_device_grads_gib': grad_bytes / 2**30,
      'per_device_activations_gib_estimate': activation_bytes / 2**30,
      'per_device_total_gib_estimate': (state_bytes + grad_bytes + activation_bytes) / 2**30,
  }


def format_report(report):
  lines = [f'params: {report["params"]:,} ({report["params"] / 1e6:.1f}M)',
           f'train FLOPs/token: {report["train_flops_per_token"]:.3e}',
           f'mesh: {report["mesh"]}']
  for key in ('per_device_state_gib', 'per_device_grads_gib',
              'per_device_activations_gib_estimate', 'per_device_total_gib_estimate'):
    lines.append(f'{key}: {report[key]:.3f}')
  return '\n'.join(lines)


