"""Train-step speed of a config: tokens/s, step time, model TFLOP/s and MFU.

Synthetic token batches (the step's speed, not the loader's); compile time is
reported separately; the step time is the median of the timed steps.
"""
import resource
import statistics
import time

import jax

from bench.synthetic import synthetic_batch
from data_pipeline.global_batch import batch_sharding
from pretrain import flops
from pretrain import mesh as mesh_lib
from pretrain import optimizer
from pretrain import train_state
from pretrain import train_step


def measure(config, steps, peak=None):
  mesh = mesh_lib.make_mesh(config.mesh)
  spec = train_state.ModelSpec(config.model, mesh)
  tx = optimizer.make_optimizer(config.train)
  state, shardings = train_state.create_train_state(spec, tx, config.seed)
  step_fn = train_step.make_train_step(spec, tx, optimizer.learning_rate_schedule(config.train),
                                       shardings, config.train)
  batch = jax.device_put(synthetic_batch(config),
                         batch_sharding(mesh))
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
  peak = peak or flops.measure_matmul_peak(size=4096)
  model_flops = flops.train_flops_per_token(config.model, config.data.seq_len) * tokens / step_s
  return {'tokens_per_s': tokens / step_s, 'step_s': step_s, 'compile_s': compile_s,
          'model_tflops': model_flops / 1e12, 'peak_flops': peak,
          'mfu': model_flops / (peak * jax.device_count()),
          'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          'params': sum(x.size for x in jax.tree.leaves(state['params'])),
          'devices': jax.device_count()}
