"""Train-step speed of a config: tokens/s, step time, model TFLOP/s and MFU.

Synthetic token batches (the step's speed, not the loader's); compile time is
reported separately; the step time is the median of the timed steps.
"""
import resource
import statistics
import time

import jax

from bench import synthetic
from engine import flops


def measure(config, steps, peak=None):
  _, state, step_fn, batch = synthetic.train_setup(config)
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
