"""SIGTERM/SIGINT outside a training loop: one line and exit 0, at any moment.

A training loop stops at a step boundary by itself (engine/trainer.py installs
its own handlers). Everywhere else (evaluation, the report's plots, export) the
signal raises `Stopped` in the main thread; the command unwinds (locks released,
temp files removed by their `finally`), prints its one line and leaves with
os._exit(0): a normal interpreter exit while XLA's or matplotlib's threads are
still busy can end in a segmentation fault (exit 139) after the clean line.
"""
import gc
import os
import signal
import sys
import threading


class Stopped(BaseException):
  """Raised by the handlers below; BaseException so `except Exception` lets it pass."""


def _raise_stopped(signum, frame):
  if _importing(frame):
    # An exception inside an import can leave a C extension half initialised (a crash
    # at exit) or be swallowed by a library's guarded import (the signal lost): the
    # same signal is sent again shortly, until it lands outside every import.
    threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
    return
  raise Stopped(signal.Signals(signum).name)


def _importing(frame):
  while frame is not None:
    if frame.f_code.co_filename.startswith('<frozen importlib'):
      return True
    frame = frame.f_back
  return False


def install():
  """(Re)installs the handlers; call again after a trainer replaced them."""
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _raise_stopped)


def ignore():
  """While the final line is written and the process leaves: a second signal waits."""
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, signal.SIG_IGN)


def exit_stopped(line, stop=None):
  """Prints `line` (None: nothing, e.g. not process 0) and exits 0 at once. `stop`, the
  Stopped being handled: its traceback holds the frames it unwound (a `prepare` worker
  pool among them); dropped and collected first, their semaphores are released, so
  multiprocessing's tracker has no 'leaked semaphore' warning to print after the line."""
  ignore()
  if stop is not None:
    stop.__traceback__ = stop.__context__ = None
    gc.collect()
  if line:
    print(line, flush=True)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)
