"""Train-step speed of a config: tokens/s, step time, model TFLOP/s and MFU.

    python -m bench.step_speed --config=configs/small.py [--steps=8] [--json]

Synthetic token batches (the step's speed, not the loader's); compile time is
reported separately; the step time is the median of the timed steps; MFU is
against a float32 matmul measured in the same process.
"""
import json
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import jax

from bench.synthetic import synthetic_batch
from pretrain import flops
from pretrain import mesh as mesh_lib
from pretrain import optimizer
from pretrain import train_state
from pretrain import train_step

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/small.py', 'Config to time.')
_STEPS = flags.DEFINE_integer('steps', 8, 'Timed steps after 2 warmup steps.')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object as the last line.')


def measure(config, steps):
  mesh = mesh_lib.make_mesh(config.mesh)
  spec = train_state.ModelSpec(config.model, mesh)
  tx = optimizer.make_optimizer(config.train)
  state, shardings = train_state.create_train_state(spec, tx, config.seed)
  step_fn = train_step.make_train_step(spec, tx, optimizer.learning_rate_schedule(config.train),
                                       shardings, config.train)
  batch = jax.device_put(synthetic_batch(config),
                         train_step.batch_sharding(mesh))
  start = time.perf_counter()
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  tokens = config.train.batch_size * config.data.seq_len
  peak = flops.measure_matmul_peak(size=2048)
  model_flops = flops.train_flops_per_token(config.model, config.data.seq_len) * tokens / step_s
  return {'tokens_per_s': tokens / step_s, 'step_s': step_s, 'compile_s': compile_s,
          'model_tflops': model_flops / 1e12, 'peak_flops': peak,
          'mfu': model_flops / (peak * jax.device_count()),
          'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          'params': sum(x.size for x in jax.tree.leaves(state['params'])),
          'devices': jax.device_count()}


def main(argv):
  del argv
  result = measure(_CONFIG.value, _STEPS.value)
  for key, value in result.items():
    print(f'{key:>14}: {value:.4g}' if isinstance(value, float) else f'{key:>14}: {value}')
  if _JSON.value:
    print(json.dumps(result))


if __name__ == '__main__':
  sys.path.insert(0, '.')
  app.run(main)
