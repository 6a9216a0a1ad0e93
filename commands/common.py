"""Flags every command takes, and the plumbing around a command's `main`."""
import os
import sys

from absl import flags
from ml_collections import config_dict
from ml_collections import config_flags

from commands import stopping
from configs.errors import UserError
from configs.validate import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # without --config, the default file's overrides are applied here, at definition
  CONFIG = config_flags.DEFINE_config_file(
      'config', os.path.join(REPO, 'configs', 'base.py'), 'Config file (configs/<name>.py).')
except (AttributeError, KeyError) as e:
  from configs.errors import unknown_config_key
  print(f'error: {unknown_config_key(e, sys.argv)}', file=sys.stderr)
  sys.exit(2)
WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for everything a run produces.')
JSON = flags.DEFINE_bool('json', False, 'Print one JSON object as the last stdout line.')
HEARTBEAT_TIMEOUT = flags.DEFINE_integer('heartbeat_timeout', 30, 'Multi-process: seconds '
                                         'without a heartbeat before a process counts as lost.')
COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of '
                                  'process 0.')
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process: process count.')
PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process: this process index.')


def define(kind, name, default, *args):
  """A flag several commands share (eval and generate both take --checkpoint):
  defined by whichever command module is imported first."""
  if name not in flags.FLAGS:
    getattr(flags, f'DEFINE_{kind}')(name, default, *args)
  return lambda: flags.FLAGS[name].value


def checkpoint_flags():
  """(--checkpoint, --step) accessors, for the commands that read one checkpoint."""
  return (define('string', 'checkpoint', None, 'A checkpoint step directory instead of the '
                 'workdir\'s latest.'),
          define('integer', 'step', None, 'Use this step of the workdir.'))


def resume_flag():
  return define('bool', 'resume', True, 'Continue from the latest complete checkpoint in the '
                'workdir (--noresume sets old steps aside).')


def one_line(message, limit=1000):
  """One line, always: causes quoted from libraries (TensorStore, Orbax) can span many."""
  message = ' '.join(str(message).split())
  return message if len(message) <= limit else message[:limit - 3] + '...'


def fail(message, code=2):
  """The one error line, then exit at once: at interpreter shutdown TensorStore's and
  Orbax's threads can print tracebacks after it ('Event loop is closed')."""
  print(f'error: {one_line(message)}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)


def parse_flags(argv):
  """absl's parser, but a bad flag is one line and exit 2 instead of usage + exit 1."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: no such key
    from configs.errors import unknown_config_key
    fail(unknown_config_key(e, argv))
  except (flags.Error, TypeError, ValueError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    fail(f'{message}; see `python run.py <command> --help` and configs/base.py for flags and '
         'config keys')


def split_tuple_literals(config):
  """`--config.x='(a, b)'` reaches a tuple key as the one string '(a, b)' (ml_collections
  parses only quoted elements); split it, so the README's form works for paths and names."""
  for key, value in config.items():
    if isinstance(value, config_dict.ConfigDict):
      split_tuple_literals(value)
    elif (isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], str)
          and value[0].startswith('(') and value[0].endswith(')')):
      parts = [p.strip().strip('\'"') for p in value[0][1:-1].split(',')]
      config[key] = tuple(p for p in parts if p)


def load_config():
  config = CONFIG.value
  if not isinstance(config, config_dict.ConfigDict):
    fail(f'cannot load --config={flags.FLAGS["config"].config_filename!r}; give a file in '
         'configs/ such as configs/tiny.py')
  split_tuple_literals(config)
  validate(config)
  return config


def write_resolved_config(config, workdir):
  from engine import paths
  paths.write_atomic(os.path.join(workdir, 'config.json'), config.to_json(indent=1))


def on_ready(config, workdir):
  """For stages: WORKDIR/config.json is replaced once the stage's checks pass."""
  import jax
  return lambda: jax.process_index() == 0 and write_resolved_config(config, workdir)


def initialize_distributed():
  from engine import distributed
  distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value,
                         heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT.value)


def check_workdir(workdir, writes=True):
  """A workdir that is a file, or one a training run cannot write in, is one line at
  start instead of a traceback later. Commands that only read it (eval, generate,
  export) accept a read-only one."""
  from engine import paths
  from engine import storage
  if paths.is_remote(workdir):
    storage.check_remote_workdir(workdir, writes)
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'--workdir={workdir} is a file, not a directory; give a directory path')
  if not writes:
    return
  if os.path.isdir(workdir):
    storage.require_writable_dir(workdir)
    return
  parent = os.path.dirname(workdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f'cannot create --workdir={workdir}: {parent} is a file, not a directory; '
                    'give another path')
  if not os.access(parent, os.W_OK):
    raise UserError(f'cannot create --workdir={workdir}: {parent} is not writable (read-only '
                    'or permissions); give another path')


def run(module, argv):
  """Validates the config and workdir, starts JAX's distributed runtime and calls
  the command's main; a UserError anywhere is one `error:` line and exit 2."""
  if len(argv) > 2 and not getattr(module, 'TAKES_ARGS', False):
    fail(f'unexpected arguments {argv[2:]}; flags take the form --name=value')
  from engine import storage
  storage.install_quiet_hooks()  # every command reads checkpoints; a damaged one stays one line
  try:
    if getattr(module, 'RAW', False):  # launch: no config, no JAX here
      return module.main(argv)
    config = load_config()
    workdir = None
    if getattr(module, 'NEEDS_WORKDIR', True):
      if not WORKDIR.value:
        raise UserError('--workdir is required; give a directory for this run\'s outputs')
      from engine import paths
      workdir = paths.resolve(WORKDIR.value)
      check_workdir(workdir, writes=not getattr(module, 'READS_WORKDIR_ONLY', False))
    initialize_distributed()
    stopping.install()
    result = module.main(config, workdir)
    stopping.ignore()  # done: a signal while the interpreter exits changes nothing
    return result
  except stopping.Stopped as stop:
    import jax
    name = sys.argv[1] if len(sys.argv) > 1 else module.__name__.rsplit('.', 1)[-1]
    advice = getattr(module, 'ON_STOP', 'run the same command again to do it')
    stopping.exit_stopped(f'{name}: {stop} received; stopped: {advice}'
                          if jax.process_index() == 0 else None, stop)
  except UserError as e:
    from engine import storage
    if isinstance(e, storage.StorageError):
      # Orbax's threads may still wait on the failed storage; exit without joining them
      print(f'error: {one_line(e)}', file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(2)
    fail(str(e))


def print_json(value):
  import json
  print(json.dumps(value, ensure_ascii=False))
