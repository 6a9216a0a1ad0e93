"""SIGTERM at any moment of a command's life, from the first imports to the training
loop: exit 0 and one line saying it stopped. A signal raised inside an import used to
be lost (a library's guarded import swallowed it) or to crash the exit (exit 139)."""
import signal
import subprocess
import time

import pytest

from tests.cli_helpers import fresh_workdir, start_cli

ARGS = ['--config=configs/tiny.py', '--config.train.steps=100000',
        '--config.train.eval_every=0', '--config.checkpoint.save_every_steps=0']


@pytest.mark.parametrize('delay', [0.05, 0.3, 0.8, 1.5, 3.0])
def test_sigterm_early_or_late_is_one_line_and_exit_0(tiny_workdir, tmp_path, delay):
  workdir = fresh_workdir(tiny_workdir, tmp_path / 'w')
  proc = start_cli('pretrain', *ARGS, f'--workdir={workdir}', stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True)
  time.sleep(delay)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, (proc.returncode, out[-2000:], err[-3000:])
  assert 'Fatal Python error' not in err and 'Traceback' not in err, err[-3000:]
  # Before the loop: the command's stop line; inside it: the trainer's save at a step.
  stopped = [l for l in out.splitlines()
             if l.startswith('pretrain: SIGTERM received') or 'SIGTERM' in l and 'saved' in l]
  assert len(stopped) == 1, out[-3000:]
