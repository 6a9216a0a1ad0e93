"""A loss that stops being finite ends training with one error line naming the step,
and no checkpoint holds the state it produced. The trainer reads each loss one step
late (the host prepares the next batch meanwhile), so this pins down that the late
read still names the right step and still comes before any save."""
import json
import os

import numpy as np

from tests.cli_helpers import fresh_workdir
from tests.cli_helpers import one_line_error
from tests.cli_helpers import restore_state
from tests.cli_helpers import run_cli


def _diverge(tiny_workdir, path, *overrides):
  workdir = fresh_workdir(tiny_workdir, path)
  result = run_cli('pretrain', '--config=configs/tiny.py', f'--workdir={workdir}',
                   '--config.train.steps=60', '--config.train.batch_size=4',
                   # AdamW with decay: at this rate the decoupled decay overflows the params
                   # (Muon keeps its own rate; without decay the loss saturates at log V)
                   '--config.train.optimizer=adamw', '--config.train.weight_decay=0.1',
                   '--config.train.warmup_steps=1', '--config.train.learning_rate=1e6',
                   '--config.train.grad_clip=0', '--config.train.eval_every=0',
                   '--config.checkpoint.keep=100', '--config.train.peak_tflops=1', *overrides)
  one_line_error(result, 'loss is ')
  error = result.stderr.strip().splitlines()[-1]
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  return workdir, error, int(error.split(' at step ')[1].split(';')[0]), saved


def test_diverging_run_names_the_first_nonfinite_step_and_saves_nothing_from_it(
    tiny_workdir, tmp_path):
  # Every step logged and saved: each loss is read before anything else happens.
  _, eager_error, eager_step, _ = _diverge(
      tiny_workdir, tmp_path / 'eager', '--config.train.log_every=1',
      '--config.checkpoint.save_every_steps=1', '--config.checkpoint.async_save=False')
  # Few logs and saves: most losses are read one step late.
  workdir, error, bad_step, saved = _diverge(
      tiny_workdir, tmp_path / 'late', '--config.train.log_every=1000',
      '--config.checkpoint.save_every_steps=3')
  assert 1 < bad_step < 60 and bad_step == eager_step, (error, eager_error)
  assert saved and max(saved) < bad_step, (saved, bad_step)
  assert f'last good checkpoint (step {max(saved)})' in error
  params = restore_state(workdir, max(saved))['params']
  assert all(np.all(np.isfinite(x)) for x in _leaves(params))
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert not [r for r in map(json.loads, f) if r['step'] >= bad_step]


def _leaves(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield np.asarray(tree)
