"""Runs run.py in a subprocess, as a user would, and reads what it leaves in a workdir.
Stdlib only at import time (jax must not be imported before conftest sets XLA_FLAGS)."""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(env=None):
  full_env = dict(os.environ)
  full_env.pop('XLA_FLAGS', None)  # the 8 simulated devices are for in-process mesh tests
  full_env.update(env or {})
  return full_env


def run_cli(*args, env=None, timeout=600, cwd=REPO):
  """Runs `python run.py ...` in a subprocess; returns CompletedProcess."""
  return subprocess.run([sys.executable, os.path.join(REPO, 'run.py'), *args], cwd=cwd,
                        env=_env(env), capture_output=True, text=True, timeout=timeout)


def start_cli(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen_kwargs):
  """Starts `python run.py ...` (to be signalled or killed); returns the Popen."""
  return subprocess.Popen([sys.executable, os.path.join(REPO, 'run.py'), *args], cwd=REPO,
                          env=_env(), stdout=stdout, stderr=stderr, **popen_kwargs)


def kill_at_checkpoint(command, args, workdir, step, timeout_s=300):
  """Starts `run.py command *args`, SIGKILLs it as soon as WORKDIR/checkpoints/<step>
  exists (failing if it exits or takes over `timeout_s` first) and returns the step
  directories written by then, sorted."""
  proc = start_cli(command, *args)
  deadline = time.time() + timeout_s
  try:
    while not os.path.isdir(os.path.join(workdir, 'checkpoints', str(step))):
      assert time.time() < deadline and proc.poll() is None, f'{command} never saved {step}'
      time.sleep(0.01)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


def one_line_error(result, fragment):
  """Exit code 2 and exactly one `error:` line, the last, holding `fragment`; no traceback."""
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  lines = result.stderr.strip().splitlines()
  assert lines, 'no stderr'
  assert lines[-1].startswith('error: ') and fragment in lines[-1], lines[-1]
  assert sum(l.startswith('error: ') for l in lines) == 1, lines
  assert not any('Traceback' in l for l in lines), result.stderr[-3000:]


def fresh_workdir(prepared_workdir, path):
  """A new workdir at `path` holding a copy of a prepared tokenizer and dataset."""
  os.makedirs(path)
  for part in ('tokenizer', 'tfds'):
    shutil.copytree(os.path.join(prepared_workdir, part), os.path.join(path, part))
  return pathlib.Path(path)


# AdamW at 2e-3 for tiny_pretrain: a barely trained model whose answers still vary with the
# prompt, as the post-training and serving tests need (10 steps of tiny's Muon already
# collapse it to one or two answers). A test resuming its checkpoint passes these too.
START_OPTIMIZER = ('--config.train.optimizer=adamw', '--config.train.learning_rate=2e-3')


def tiny_pretrain(prepared_workdir, path):
  """A fresh workdir at `path` pretrained for 10 tiny steps (checkpoint 10): the start
  of the post-training tests."""
  p = fresh_workdir(prepared_workdir, path)
  result = run_cli('pretrain', '--config=configs/tiny.py', f'--workdir={p}', *START_OPTIMIZER,
                   '--config.train.steps=10', '--config.train.batch_size=4',
                   '--config.train.eval_every=0', '--config.checkpoint.save_every_steps=10',
                   '--config.train.peak_tflops=1')
  assert result.returncode == 0, result.stderr[-2000:]
  return p


def other_tokenizer(directory):
  """A tokenizer of the same size as the tiny one, trained on a sample of its lines."""
  from configs import tiny
  from data_pipeline import documents, embedded
  from data_pipeline import tokenizer as tokenizer_lib
  config = tiny.get_config()
  config.tokenizer.max_sentences = 3000
  tokenizer = tokenizer_lib.train_tokenizer(
      documents.iter_documents(embedded.TRAIN_FILES, config.data), config.tokenizer)
  tokenizer_lib.save_tokenizer(tokenizer, str(directory))
  return tokenizer


def write_jsonl(path, lines):
  """One line per item: a string as it is, anything else as JSON. Returns str(path)."""
  with open(path, 'w') as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line)) + '\n')
  return str(path)


def read_records(workdir):
  """Every line of WORKDIR/metrics.jsonl, parsed."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def restore_state(workdir, step):
  """The saved train state of checkpoint `step`, as numpy arrays."""
  import orbax.checkpoint as ocp
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))


def file_hashes(root):
  """{relative path: sha256} of every file under `root` (folders not listed)."""
  out = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def tree_hashes(root):
  """{relative path: sha256} of every file under `root` (folders map to None): a
  workdir compared before and after a failing command must be unchanged."""
  out = {}
  for directory, subdirs, names in os.walk(root):
    for name in subdirs:
      out[os.path.relpath(os.path.join(directory, name), root) + '/'] = None
    for name in names:
      path = os.path.join(directory, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


TIMING = ('tokens_per_s', 'step_time_s', 'mfu', 'model_tflops_per_device')


def deterministic_metrics(record):
  """A metrics.jsonl record without what the clock decides (times, speeds, MFU)."""
  return {k: v for k, v in record.items() if not k.startswith('time/') and k not in TIMING}


def assert_same_saved_state(a_dir, b_dir, step):
  """Two runs' checkpoints of `step` are bitwise equal: every saved array (params,
  optimizer states, RNG keys, a stage's own state) and the data iterator's state."""
  import jax
  import numpy as np
  la = jax.tree_util.tree_leaves_with_path(restore_state(a_dir, step))
  lb = jax.tree_util.tree_leaves_with_path(restore_state(b_dir, step))
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=str(path))
  data = [json.loads((pathlib.Path(d) / 'checkpoints' / str(step) / 'data' /
                      'process_0-of-1.json').read_text()) for d in (a_dir, b_dir)]
  assert data[0] == data[1]
