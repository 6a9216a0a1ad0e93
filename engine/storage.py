"""Storage faults as one line: a workdir that is not a writable directory, and a
checkpoint write that fails (full disk, read-only, permissions, I/O error) or
does not finish in time.

Orbax and TensorStore report a failed write as many exception types, often
wrapped, with the OS cause only in the text; `cause` finds it.
"""
import errno
import logging as std_logging
import os
import re
import socket
import sys
import threading
import traceback
import time

from configs.errors import UserError
from engine import paths

# errno → (what happened, what to do).
_CAUSES = {
    errno.ENOSPC: ('no space left on the device', 'free space or use a workdir on a larger disk'),
    errno.EDQUOT: ('the disk quota is exceeded', 'free space or raise the quota'),
    errno.EFBIG: ('a file exceeds the size limit of this file system or process',
                  'raise the limit (ulimit -f) or use another disk'),
    errno.EROFS: ('the file system is read-only', 'remount it read-write or use another '
                  'workdir'),
    errno.EACCES: ('permission denied', 'fix the directory\'s permissions or use another '
                   'workdir'),
    errno.EPERM: ('operation not permitted', 'fix the directory\'s permissions or use another '
                  'workdir'),
    errno.EIO: ('an I/O error from the device', 'check the disk (dmesg) or use another one'),
    errno.ENOTDIR: ('a path component is a file, not a directory', 'remove that file or use '
                    'another workdir'),
    errno.ENOENT: ('the directory disappeared while writing', 'check what deletes it (a '
                   'cleanup job, an unmounted volume) and run again'),
}
_TEXT = ((re.compile(r'no space left|resource_exhausted.*space|errno[ =]+28', re.I), errno.ENOSPC),
         (re.compile(r'read-only file system|errno[ =]+30', re.I), errno.EROFS),
         (re.compile(r'permission denied|errno[ =]+13', re.I), errno.EACCES),
         (re.compile(r'quota exceeded|errno[ =]+122', re.I), errno.EDQUOT),
         (re.compile(r'file too large|errno[ =]+27', re.I), errno.EFBIG),
         (re.compile(r'input/output error|errno[ =]+5\b', re.I), errno.EIO),
         (re.compile(r'not a directory|errno[ =]+20', re.I), errno.ENOTDIR))


class StorageError(UserError):
  """A write to the workdir failed; the message names the path, the cause and the fix."""


def cause(exc):
  """(what happened, what to do) for an exception from a write, or None."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in _CAUSES:
      happened, fix = _CAUSES[exc.errno]
      if exc.strerror and exc.strerror != os.strerror(exc.errno):  # our own detail
        happened = f'{happened} ({exc.strerror})'
      return happened, fix
    for pattern, code in _TEXT:
      if pattern.search(str(exc)):
        return _CAUSES[code]
    exc = exc.__cause__ or exc.__context__
  return None


def describe(exc):
  found = cause(exc)
  if found:
    return found
  first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
  return (f'{type(exc).__name__}: {first}', 'check the disk and the path, then run again')


def probe_write(path):
  """Creates `path` if needed and writes (then removes) one page in it; OSError if not."""
  if paths.is_remote(path):
    probe = paths.epath.Path(path) / f'.write-probe-{socket.gethostname()}-{os.getpid()}'
    probe.write_bytes(b'\0' * 4096)
    probe.unlink(missing_ok=True)
    return
  os.makedirs(path, exist_ok=True)
  probe = os.path.join(path, f'.write-probe-{socket.gethostname()}-{os.getpid()}')
  try:
    with open(probe, 'wb') as f:
      f.write(b'\0' * 4096)  # a full page: a full tmpfs refuses it, an empty file not
      f.flush()
      os.fsync(f.fileno())
  finally:
    if os.path.exists(probe):
      os.remove(probe)


def require_writable_dir(path, what='--workdir'):
  """`path` is (or can be made) a directory this process can write in."""
  if paths.is_remote(path):
    check_remote_workdir(path, writes=True, what=what)
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise StorageError(f'{what}={path} is a file, not a directory; give a directory path')
  try:
    probe_write(path)
  except OSError as e:
    happened, fix = describe(e)
    raise StorageError(f'cannot write in {what}={path}: {happened}; {fix}') from None


REMOTE_CHECK_TIMEOUT_S = 90  # gcsfs retries a refused connection for about 30 s


def bounded(fn, seconds, what):
  """fn() in a helper thread, waited for at most `seconds`: a store that does not
  answer is an error line, never a hang (its client retries for minutes)."""
  result = {}

  def target():
    try:
      result['value'] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      result['error'] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    raise StorageError(f'{what}: no answer from the storage within {seconds} s; check that it '
                       'is reachable (network, STORAGE_EMULATOR_HOST) and run again')
  if 'error' in result:
    raise result['error']
  return result.get('value')


def remote_cause(exc):
  """What a gs:// failure means, from gcsfs's and google-auth's exception texts."""
  text = f'{type(exc).__name__}: {exc}'
  if re.search(r'401|403|forbidden|permission|unauthori[sz]ed|credentials|DefaultCredentials',
               text, re.I):
    return ('no permission or no credentials', 'run `gcloud auth application-default login` '
            'or give the job a service account with access to the bucket')
  if re.search(r'connect|timeout|timed out|unreachable|name resolution|refused', text, re.I):
    return ('the storage is unreachable', 'check the network (or STORAGE_EMULATOR_HOST) and '
            'run again')
  return describe(exc)


def check_remote_workdir(workdir, writes, what='--workdir'):
  """A gs:// workdir: the bucket exists and (for writers) a probe object can be written,
  each in bounded time; any failure is one StorageError line."""
  def check():
    paths.require_bucket(workdir, what)
    if writes:
      probe_write(workdir)
  try:
    bounded(check, REMOTE_CHECK_TIMEOUT_S, f'{what}={workdir}')
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    happened, fix = remote_cause(e)
    raise StorageError(f'cannot {"write in" if writes else "read"} {what}={workdir}: '
                       f'{happened}; {fix}') from None


LOST_PEER_WAIT_S = 45  # longer than the default heartbeat timeout (30 s)


def save_failed(step, directory, exc):
  if cause(exc) is None and _process_count() > 1:
    # No storage cause: most likely another process is gone and the collective save
    # failed with it. JAX's heartbeat check then ends this process naming the lost one,
    # which says more than we can: give it the time (bounded), then say what we know.
    time.sleep(LOST_PEER_WAIT_S)
  happened, fix = remote_cause(exc) if paths.is_remote(directory) else describe(exc)
  return StorageError(f'saving checkpoint {step} to {directory} failed: {happened}; {fix}. '
                      'Training stopped at this step; the checkpoints before it are intact, and '
                      'the next run resumes from the latest of them')


def _process_count():
  import jax
  return jax.process_count()


def check_free_space(directory, previous_step_dir):
  """Refuses a save that cannot fit: a step needs about as much as the previous one
  (same arrays), and a write that runs out of space half-way fails in Orbax's
  background threads, after training went on."""
  if paths.is_remote(directory):  # object stores do not run out of space
    return
  if not previous_step_dir or not os.path.isdir(previous_step_dir):
    return
  needed = paths.folder_bytes(previous_step_dir)
  stats = os.statvfs(directory)
  free = stats.f_bavail * stats.f_frsize
  if free < needed * 1.05 + (1 << 20):
    raise OSError(errno.ENOSPC, f'{free / 2**20:.1f} MiB free, a checkpoint needs about '
                  f'{needed / 2**20:.1f} MiB')


class _Quiet(std_logging.Filter):
  """Orbax logs each failed write with a traceback from its threads; one line each
  is enough (the error line says what to do), and after a failure, none."""
  failed = False

  def filter(self, record):
    if '/orbax/' not in (record.pathname or ''):
      return True
    if _Quiet.failed:
      return False
    if record.levelno >= std_logging.ERROR:
      record.msg, record.args = str(record.getMessage()).splitlines()[0][:300], ()
      record.exc_info = record.exc_text = None
    return True


_hooks_installed = False


def install_quiet_hooks():
  """Keeps storage failures to one line: Orbax's log records shortened (above), and
  TensorStore's callbacks into an event loop Orbax already closed after a failed
  write ('Event loop is closed', one traceback per pending array) not printed."""
  global _hooks_installed
  if _hooks_installed:
    return
  _hooks_installed = True
  # gcsfs logs each exhausted retry with a traceback; the error line says what failed
  std_logging.getLogger('gcsfs').setLevel(std_logging.CRITICAL)
  quiet = _Quiet()
  for logger in (std_logging.getLogger(), std_logging.getLogger('absl')):
    logger.addFilter(quiet)
    for handler in logger.handlers:
      handler.addFilter(quiet)
  default_excepthook, default_unraisable = sys.excepthook, sys.unraisablehook

  def closed_loop(exc):
    return isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc)

  def abandoned_read(unraisable):
    """A restore that failed on one array leaves its sibling reads' coroutines unawaited;
    their collection prints 'Exception ignored in: <coroutine ...>' once per array, after
    the fallback's one warning line already said what happened."""
    code = getattr(unraisable.object, 'cr_code', None)
    return code is not None and any(lib in code.co_filename for lib in ('/orbax/', 'tensorstore'))

  sys.excepthook = lambda t, e, tb: None if closed_loop(e) else default_excepthook(t, e, tb)
  sys.unraisablehook = lambda u: None if closed_loop(u.exc_value) or abandoned_read(u) \
      else default_unraisable(u)
  def storage_error_in_orbax_thread(args):
    """An Orbax save thread that died on the storage (connection refused, disk gone):
    Orbax logs it in one line and the main thread's save reports it as the error line,
    so its traceback would only repeat them."""
    return isinstance(args.exc_value, OSError) and any(
        '/orbax/' in frame.f_code.co_filename
        for frame, _ in traceback.walk_tb(args.exc_traceback))

  default_thread_hook = threading.excepthook
  threading.excepthook = lambda a: None if closed_loop(a.exc_value) or \
      storage_error_in_orbax_thread(a) else default_thread_hook(a)


def quiet_after_failure():
  """Once a save failed and the one error line is decided, Orbax's threads still log
  while they unwind; keep them out of the user's terminal."""
  install_quiet_hooks()
  _Quiet.failed = True
  threading.excepthook = lambda args: None
