"""`run.py pretrain|sft --verify_resume`: proves exact resume on this machine.

Runs the same config three times in fresh processes, in WORKDIR/verify_resume/:
`straight` trains N steps; `resumed` stops after step k = N // 2 (with a
checkpoint), then a new process resumes it to N. Per-step losses and final
params must be bitwise equal; prints PASS or FAIL with the first differing step.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs.errors import UserError
from data_pipeline import tfds_corpus
from data_pipeline import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(workdir):
  losses = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if 'loss' in record:
        losses[record['step']] = record['loss']
  return losses


def _params(workdir, step):
  checkpointer = ocp.StandardCheckpointer()
  return checkpointer.restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))['params']


def _run(command, args, label):
  result = subprocess.run([sys.executable, os.path.join(REPO, 'run.py'), command, *args],
                          capture_output=True, text=True)
  if result.returncode != 0:
    tail = result.stderr.strip().splitlines()[-1:] or ['(no output)']
    raise UserError(f'verify_resume: the {label} run failed: {tail[0]}')


def verify(config, workdir, passthrough_args, command='pretrain'):
  steps = config.train.steps
  if steps < 2:
    raise UserError('--verify_resume needs train.steps >= 2; set a small number like 20')
  k = steps // 2
  base = os.path.join(workdir, 'verify_resume')
  shutil.rmtree(base, ignore_errors=True)  # a stale run must never be compared
  # Pretraining reads the workdir's tokenizer and data; a fine-tuning stage reads
  # --init_from's (passed through).
  data = ([f'--config.tokenizer.path={tokenizer_lib.tokenizer_path(workdir, config.tokenizer)}',
           f'--config.data.tfds_data_dir={tfds_corpus.tfds_dir(config, workdir)}']
          if command == 'pretrain' else [])
  shared = [*data, '--config.train.log_every=1', '--config.checkpoint.save_every_steps=0',
            '--config.checkpoint.save_every_minutes=0', '--config.train.eval_every=0',
            '--config.checkpoint.keep=10', '--noresume']
  args = [a for a in passthrough_args if not a.startswith(('--workdir', '--verify_resume',
                                                           '--resume', '--noresume'))]
  straight, resumed = os.path.join(base, 'straight'), os.path.join(base, 'resumed')
  for path in (straight, resumed):
    os.makedirs(path, exist_ok=True)
  _run(command, [*args, *shared, f'--workdir={straight}'], 'uninterrupted')
  _run(command, [*args, *shared, f'--workdir={resumed}', f'--config.train.stop_after={k}'],
       'first half')
  _run(command, [*args, *shared[:-1], '--resume', f'--workdir={resumed}'], 'resumed')
  a, b = _losses(straight), _losses(resumed)
  for step in range(k + 1, steps + 1):
    if a.get(step) != b.get(step):
      print(f'verify_resume: FAIL: loss differs first at step {step}: {a.get(step)!r} vs '
            f'{b.get(step)!r}')
      return False
  for x, y in zip(jax.tree.leaves(_params(straight, steps)), jax.tree.leaves(_params(resumed,
                                                                                     steps))):
    if not np.array_equal(np.asarray(x), np.asarray(y)):
      print('verify_resume: FAIL: losses equal but final params differ')
      return False
  print(f'verify_resume: PASS: steps {k + 1}..{steps} after a restart at step {k} are bitwise '
        'identical (losses and final params)')
  return True
