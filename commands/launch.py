"""`run.py launch --num_processes=N -- <command ...>`: N local processes of a command."""
import sys

from absl import flags

from commands import common

RAW, TAKES_ARGS = True, True  # the command after `--` is passed through unparsed
DEVICES_PER_PROCESS = flags.DEFINE_integer('devices_per_process', 0, 'Simulated CPU devices '
                                           'per process (0 = the default).')


def main(argv):
  from engine import launch
  count = common.NUM_PROCESSES.value
  if count is not None and count < 1:
    common.fail(f'--num_processes={count} must be >= 1 (the number of local processes)')
  if DEVICES_PER_PROCESS.value < 0:
    common.fail(f'--devices_per_process={DEVICES_PER_PROCESS.value} must be >= 0 '
                '(0 = the default)')
  sys.exit(launch.launch(count or 1, DEVICES_PER_PROCESS.value, argv[2:]))
