"""SIGTERM/SIGINT inside the training loop: a flag checked between steps, and the one
per-step agreement that makes every process act on a signal, a clock-based save or a
failed save at the same step."""
import signal

import jax
from jax.experimental import multihost_utils
import numpy as np

from engine import storage


class StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.signal = None
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, self._handle)

  def _handle(self, signum, _):
    self.signal = signal.Signals(signum).name


def agree(local_signal, local_due_by_time, local_failure=None):
  """(signal, due_by_time) as every process will act on them.

  One allgather per step when there are several processes: a signal or a
  clock-based save seen by one process is acted on by all at the same step, so
  no process enters a collective save (or leaves the loop) alone. A failed
  checkpoint write (`local_failure`, an exception) seen by any process is raised
  by all of them at this step.
  """
  if jax.process_count() == 1:
    if local_failure is not None:
      raise local_failure
    return local_signal, local_due_by_time
  flags = multihost_utils.process_allgather(
      np.asarray([int(local_signal is not None), int(bool(local_due_by_time)),
                  int(local_failure is not None)]))
  flags = np.asarray(flags).reshape(-1, 3)
  if flags[:, 2].any():
    raise local_failure or storage.StorageError(
        'a checkpoint save failed on another process (its error line names the path and the '
        'cause); training stopped; the checkpoints before it are intact')
  signal_name = (local_signal or 'SIGTERM (on another process)') if flags[:, 0].any() else None
  return signal_name, bool(flags[:, 1].any())
