"""Entry point: `python run.py <command> --config=configs/<file>.py --workdir=DIR`.

Commands: tokenizer, prepare, pretrain, eval, generate, sft, reward, ppo, dpo,
export, import, pipeline, launch, bench, describe, report. Each lives in commands/ with
its own flags; any config key can be overridden with `--config.section.key=value`.
Mistakes a user can fix end with one `error:` line and exit code 2.
"""
import sys

from commands import stopping


def main():
  command = sys.argv[1] if len(sys.argv) > 1 else '(none)'
  try:
    _run(command)
  except stopping.Stopped as stop:  # before the command's own handling began
    stopping.exit_stopped(f'{command}: {stop} received before it started; nothing was done', stop)


def _run(command):
  # Imported here, inside main's try: a signal while they load stops cleanly too.
  import importlib

  from absl import app
  from absl import logging

  from commands import COMMANDS
  from commands import common
  logging.set_verbosity(logging.WARNING)
  if command in ('-h', '--help', 'help'):
    print(f'{__doc__}\nusage: python run.py <command> --help  (the command\'s flags)')
    return
  if command not in COMMANDS:
    common.fail(f'unknown command {command}; choose one of: {", ".join(COMMANDS)}')
  module = importlib.import_module(COMMANDS[command])  # defines the command's flags
  app.run(lambda argv: common.run(module, argv), flags_parser=common.parse_flags)


if __name__ == '__main__':
  stopping.install()  # before anything slow is imported
  main()
