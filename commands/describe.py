"""`run.py describe`: param count, FLOPs/token and per-device memory of a config."""
from absl import flags

from commands import common

NEEDS_WORKDIR = False  # reads nothing, writes nothing
NUM_DEVICES = flags.DEFINE_integer('num_devices', None, 'Devices to plan the mesh for '
                                   '(default: this machine\'s).')


def main(config, _):
  if NUM_DEVICES.value is not None and NUM_DEVICES.value < 1:
    common.fail(f'--num_devices={NUM_DEVICES.value} must be >= 1 (or leave it out for this '
                'machine\'s count)')
  from engine import describe
  report = describe.describe(config, NUM_DEVICES.value)
  print(describe.format_report(report))
  if common.JSON.value:
    common.print_json(report)
