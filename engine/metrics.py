"""Metrics sinks: WORKDIR/metrics.jsonl and TensorBoard events (process 0 only).

A run that resumes from step k first drops the lines a killed or stopped run
wrote past k (they are trained again), so the file holds each step once and
curves drawn from it never double back.
"""
import json
import os

from tensorboardX import SummaryWriter


def drop_lines_after(path, step):
  """Rewrites `path` (atomically) without the records past `step`; with step 0 (a
  fresh run) without any record. Returns how many lines were dropped."""
  if not os.path.isfile(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record_step = json.loads(line).get('step')
    except ValueError:  # a line cut short by a kill: never a complete record
      continue
    if step > 0 and isinstance(record_step, int) and record_step <= step:
      kept.append(line if line.endswith('\n') else line + '\n')
  if len(kept) == len(lines):
    return 0
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.writelines(kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return len(lines) - len(kept)


class MetricsWriter:

  def __init__(self, workdir, enabled=True, start_step=None):
    self.enabled = enabled
    if enabled:
      path = os.path.join(workdir, 'metrics.jsonl')
      if start_step is not None:
        drop_lines_after(path, start_step)
      self._jsonl = open(path, 'a')
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
