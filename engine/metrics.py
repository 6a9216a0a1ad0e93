"""Metrics sinks: WORKDIR/metrics.jsonl and TensorBoard events (process 0 only)."""
import json
import os

from tensorboardX import SummaryWriter


class MetricsWriter:

  def __init__(self, workdir, enabled=True):
    self.enabled = enabled
    if enabled:
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step, values):
    if not self.enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for key, value in values.items():
      self._tb.add_scalar(key, float(value), int(step))

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
