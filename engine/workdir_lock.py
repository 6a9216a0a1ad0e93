"""One workdir, one writer: WORKDIR/.lock held (flock) by the training run's process 0.

The kernel drops an flock when its holder dies, so a lock left by a killed run
never blocks the next start; the file's text (host, pid, start time) only names
the holder in the message a second run prints. The file is removed on release
(a run that fails its checks leaves the workdir as it found it); a locker that
finds its locked file already unlinked tries again.
"""
import fcntl
import json
import os
import socket
import time

from configs.errors import UserError

LOCK_FILE = '.lock'


class WorkdirLock:

  def __init__(self, workdir, command):
    self.path = os.path.join(workdir, LOCK_FILE)
    for _ in range(100):
      fd = self._lock(workdir, command)
      if fd is None or _same_file(fd, self.path):
        break
      os.close(fd)  # released and unlinked by its holder after we opened it
    self._fd = fd
    if fd is not None:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                                'command': command, 'time': time.time()}).encode(), 0)

  def _lock(self, workdir, command):
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read(fd)
      os.close(fd)
      since = (time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['time']))
               if 'time' in holder else 'an unknown time')
      raise UserError(f'{workdir} is in use by another run ({holder.get("command", "a run")}, '
                      f'pid {holder.get("pid", "?")} on host {holder.get("host", "?")}, '
                      f'started {since}); wait for it to finish, stop it, or use another '
                      '--workdir') from None
    except OSError:  # a file system without flock: no lock rather than no training
      os.close(fd)
      return None
    return fd

  def release(self):
    if self._fd is not None:
      try:
        os.remove(self.path)
      except OSError:
        pass
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _read(fd):
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or '{}')
  except (OSError, ValueError):
    return {}


def _same_file(fd, path):
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except OSError:
    return False
