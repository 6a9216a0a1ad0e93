"""Checkpoint size, save time (blocking part vs background part) and the step-time
overhead of saving every step, for a config."""
import os
import shutil
import statistics
import tempfile
import time

import jax

from bench import synthetic
from engine import checkpointing

def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(path) for n in ns)


def measure(config, steps):
  _, state, step_fn, batch = synthetic.train_setup(config)
  state, m = step_fn(state, batch)
  jax.block_until_ready(m)
  workdir = tempfile.mkdtemp()
  try:
    manager = checkpointing.make_manager(workdir, config.checkpoint)
    start = time.perf_counter()
    checkpointing.save(manager, 1, state, {'next': 0}, {'config': {}}, force=True)
    blocking = time.perf_counter() - start
    manager.wait_until_finished()
    total = time.perf_counter() - start
    size = _dir_bytes(os.path.join(workdir, 'checkpoints', '1'))

    def timed(save_every_step):
      nonlocal state
      times = []
      for i in range(steps):
        begin = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)
        if save_every_step:
          checkpointing.save(manager, 2 + i, state, {'next': 0}, {'config': {}}, force=True)
        times.append(time.perf_counter() - begin)
      manager.wait_until_finished()
      return statistics.median(times)

    plain, saving = timed(False), timed(True)
    manager.close()
  finally:
    shutil.rmtree(workdir)
  return {'checkpoint_mb': size / 2**20, 'save_blocking_s': blocking, 'save_total_s': total,
          'step_s': plain, 'step_s_saving_every_step': saving,
          'async_overhead': saving / plain - 1}
