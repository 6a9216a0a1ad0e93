"""`run.py launch --num_processes=N -- <command ...>`: N local processes of a command."""
import sys

from absl import flags

from commands import common

RAW, TAKES_ARGS = True, True  # the command after `--` is passed through unparsed
DEVICES_PER_PROCESS = flags.DEFINE_integer('devices_per_process', 0, 'Simulated CPU devices '
                                           'per process (0 = the default).')


def main(argv):
  from engine import launch
  sys.exit(launch.launch(common.NUM_PROCESSES.value or 1, DEVICES_PER_PROCESS.value, argv[2:]))
