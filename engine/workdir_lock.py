"""One workdir, one writer: WORKDIR/.lock held (flock) by the training run's process 0.
On gs:// (no flock there), the lock is an object created only if absent (GCS
`ifGenerationMatch=0`) and kept alive by a heartbeat; see RemoteLock.

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
import threading
import time

from configs.errors import UserError
from engine import paths

LOCK_FILE = '.lock'
HEARTBEAT_S = 20  # a remote lock's holder rewrites it this often
LEASE_S = 120  # a remote lock not rewritten for this long is stale (its holder is gone)


def workdir_lock(workdir, command):
  return (RemoteLock if paths.is_remote(workdir) else WorkdirLock)(workdir, command)


def _in_use(workdir, holder):
  since = (time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['time']))
           if 'time' in holder else 'an unknown time')
  return UserError(f'{workdir} is in use by another run ({holder.get("command", "a run")}, '
                   f'pid {holder.get("pid", "?")} on host {holder.get("host", "?")}, '
                   f'started {since}); wait for it to finish, stop it, or use another '
                   '--workdir')


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
      raise _in_use(workdir, holder) from None
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


class RemoteLock:
  """WORKDIR/.lock on gs://: created only if no such object exists, so of two runs
  starting at once exactly one gets it. A killed holder cannot release it; the next
  run takes it over when the holder is provably gone: same host and its pid is not
  running, or no heartbeat for LEASE_S seconds (another host)."""

  def __init__(self, workdir, command):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._record = {'host': socket.gethostname(), 'pid': os.getpid(), 'command': command,
                    'time': time.time()}
    fs = paths.gcs()
    for _ in range(3):
      try:
        fs.pipe_file(self._key, self._payload(), mode='create')
        break
      except FileExistsError:
        holder = self._holder()
        if not _stale(holder):
          raise _in_use(workdir, holder) from None
        fs.rm_file(self._key)  # a stale lock: taken over below
    else:
      raise UserError(f'could not take the lock {self.path} (another run keeps taking it); '
                      'use another --workdir')
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()

  @property
  def _key(self):
    return self.path[len('gs://'):]

  def _payload(self):
    return json.dumps(dict(self._record, heartbeat=time.time())).encode()

  def _holder(self):
    try:
      return json.loads(paths.gcs().cat_file(self._key).decode() or '{}')
    except (OSError, ValueError):
      return {}

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_S):
      try:
        paths.gcs().pipe_file(self._key, self._payload())
      except Exception:  # pylint: disable=broad-except  # a missed beat; the next one retries
        pass

  def release(self):
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join(timeout=5)
    self._thread = None
    try:
      paths.gcs().rm_file(self._key)
    except Exception:  # pylint: disable=broad-except  # gone already; a later run takes it
      pass


def _stale(holder):
  if not holder:
    return True  # unreadable or empty: a writer that died half-way
  if holder.get('host') == socket.gethostname():
    try:
      os.kill(int(holder.get('pid', -1)), 0)
    except ProcessLookupError:
      return True
    except (OSError, ValueError):
      pass
  return time.time() - float(holder.get('heartbeat', holder.get('time', 0))) > LEASE_S
