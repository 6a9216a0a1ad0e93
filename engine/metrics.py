"""Metrics sinks: WORKDIR/metrics.jsonl and TensorBoard events (process 0 only).

A run that resumes from step k first drops the lines a killed or stopped run
wrote past k (they are trained again), so the file holds each step once and
curves drawn from it never double back.

On gs:// there is no append: the writer keeps the file's lines and rewrites the
object at most every FLUSH_S seconds, at every checkpoint and at the end (a kill
loses only lines past the last checkpoint, which a resume drops anyway).
TensorBoard events are written to a local temp folder and uploaded at the same
moments.
"""
import json
import os
import shutil
import time

from tensorboardX import SummaryWriter

from engine import paths

FLUSH_S = 30


def _complete_lines(text):
  return [line + '\n' for line in text.splitlines() if line.strip()]


def drop_lines_after(path, step):
  """Rewrites `path` (atomically) without the records past `step`; with step 0 (a
  fresh run) without any record. Returns how many lines were dropped."""
  if not paths.isfile(path):
    return 0
  lines = paths.read_text(path).splitlines(keepends=True)
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
  paths.write_atomic(path, ''.join(kept))
  return len(lines) - len(kept)


class MetricsWriter:

  def __init__(self, workdir, enabled=True, start_step=None):
    self.enabled = enabled
    if not enabled:
      return
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._remote = paths.is_remote(workdir)
    if start_step is not None:
      drop_lines_after(self._path, start_step)
    tensorboard = os.path.join(workdir, 'tensorboard')
    if self._remote:
      self._lines = (_complete_lines(paths.read_text(self._path))
                     if paths.isfile(self._path) else [])
      self._dirty, self._flushed_at = False, time.monotonic()
      self._tb_local, self._tb_target = paths.local_scratch('tensorboard-'), tensorboard
      self._tb = SummaryWriter(self._tb_local)
    else:
      self._jsonl = open(self._path, 'a')
      self._tb = SummaryWriter(tensorboard)

  def write(self, step, values):
    if not self.enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in values.items()}}
    for key, value in values.items():
      self._tb.add_scalar(key, float(value), int(step))
    line = json.dumps(record) + '\n'
    if not self._remote:
      self._jsonl.write(line)
      self._jsonl.flush()
      return
    self._lines.append(line)
    self._dirty = True
    if time.monotonic() - self._flushed_at >= FLUSH_S:
      try:
        self.flush()
      except Exception:  # pylint: disable=broad-except  # the next checkpoint's flush reports it
        self._flushed_at = time.monotonic()

  def flush(self):
    """Makes everything written so far durable (on gs://: one rewrite of the file)."""
    if not self.enabled or not self._remote or not self._dirty:
      return
    paths.write_atomic(self._path, ''.join(self._lines))
    self._tb.flush()
    paths.upload_tree(self._tb_local, self._tb_target)
    self._dirty, self._flushed_at = False, time.monotonic()

  def close(self):
    if not self.enabled:
      return
    if self._remote:
      self._tb.close()
      self._dirty = True  # the events' last records arrive at close
      self.flush()
      shutil.rmtree(self._tb_local, ignore_errors=True)
    else:
      self._jsonl.close()
      self._tb.close()
