"""Fault injection with real processes: storage that turns read-only or fills up
during a run, checkpoints damaged on disk (truncated, bit-flipped, emptied
metadata), a killed writer, two runs on one workdir. Each asserts the one
`error:` line, the exit code, a bounded time to fail, and that the run resumes
bitwise afterwards. Storage faults use a private mount namespace (`unshare -rm`:
a tmpfs or a read-only bind mount); they are skipped where that is not allowed.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.cli_helpers import REPO, fresh_workdir, run_cli, start_cli

ARGS = ['--config=configs/tiny.py', '--config.data.seq_len=64', '--config.train.batch_size=8',
        '--config.train.log_every=1', '--config.train.eval_batches=2',
        '--config.train.peak_tflops=1.0', '--config.train.eval_every=0',
        '--config.checkpoint.save_every_steps=10', '--config.checkpoint.keep=10',
        # A constant learning rate: a faulted run may be configured for more steps than
        # the uninterrupted one it is compared with.
        '--config.train.warmup_steps=0', '--config.train.min_lr_ratio=1.0']
ENV = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}


def _can_unshare():
  try:
    return subprocess.run(['unshare', '-rm', 'true'], capture_output=True,
                          timeout=10).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason='no private mount namespaces '
                                   '(unshare -rm) on this machine for tmpfs/read-only mounts')


def _one_line_error(stderr, code, returncode, *fragments):
  assert returncode == code, stderr[-3000:]
  lines = stderr.strip().splitlines()
  assert lines[-1].startswith('error: '), lines[-5:]
  for fragment in fragments:
    assert fragment in lines[-1], lines[-1]
  assert not any('Traceback' in line for line in lines), stderr[-3000:]
  return lines[-1]


def _params(workdir, step):
  import orbax.checkpoint as ocp
  import jax
  tree = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))['params']
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same_params(a, b, step):
  for x, y in zip(_params(a, step), _params(b, step)):
    np.testing.assert_array_equal(x, y)


def _metric_steps(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['step'] for line in f if '"loss"' in line]


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


@pytest.fixture(scope='module')
def straight(tiny_workdir, tmp_path_factory):
  """30 uninterrupted steps, checkpoints 10, 20, 30: what every resume must equal."""
  workdir = fresh_workdir(tiny_workdir, tmp_path_factory.mktemp('faults') / 'straight')
  result = run_cli('pretrain', *ARGS, '--config.train.steps=30', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


def _in_namespace(script, timeout=300):
  return subprocess.run(['unshare', '-rm', 'bash', '-c', script], capture_output=True,
                        text=True, timeout=timeout, env=ENV, cwd=REPO)


def _pretrain_line(workdir, steps):
  return (f'{sys.executable} {REPO}/run.py pretrain {" ".join(ARGS)} '
          f'--config.train.steps={steps} --workdir={workdir}')


@pytest.mark.slow
@needs_unshare
def test_checkpoint_dir_turns_read_only_mid_run(straight, tiny_workdir, tmp_path):
  workdir = fresh_workdir(tiny_workdir, tmp_path / 'ro')
  os.makedirs(workdir / 'checkpoints')
  # After checkpoint 10 exists, the directory is remounted read-only: save 20 must fail.
  script = f'''
    mount --bind {workdir}/checkpoints {workdir}/checkpoints
    {_pretrain_line(workdir, 2000)} 2> {tmp_path}/err &
    pid=$!
    while [ ! -d {workdir}/checkpoints/10 ]; do sleep 0.05; done
    mount -o remount,bind,ro {workdir}/checkpoints
    start=$(date +%s.%N); wait $pid; rc=$?
    echo "$rc $(echo "$(date +%s.%N) - $start" | bc)"'''
  result = _in_namespace(script)
  rc, seconds = result.stdout.split()[-2:]
  line = _one_line_error(open(tmp_path / 'err').read(), 2, int(rc), 'saving checkpoint 20',
                         'read-only', str(workdir / 'checkpoints'))
  assert float(seconds) < 60, (seconds, line)  # was a 5-minute hang
  assert _steps(workdir) == [10]
  assert max(_metric_steps(workdir)) == 20  # no training past the failed save
  # Writable again (the mount is gone): resume is bitwise the uninterrupted run.
  resumed = run_cli('pretrain', *ARGS, '--config.train.steps=30', f'--workdir={workdir}')
  assert resumed.returncode == 0 and 'resumed from step 10' in resumed.stdout
  _assert_same_params(straight, workdir, 30)
  assert _metric_steps(workdir) == list(range(1, 31))  # each step once


@pytest.mark.slow
@needs_unshare
@pytest.mark.parametrize('size,failed', [('5m', 10), ('14m', 20)])
def test_disk_full_during_a_save(straight, tiny_workdir, tmp_path, size, failed):
  """5m: the first save runs out of space in Orbax's background write; 14m: step 10
  fits (~9 MiB) and step 20 is refused up front (free space < the last step's size)."""
  workdir = fresh_workdir(tiny_workdir, tmp_path / 'full')
  os.makedirs(workdir / 'checkpoints')
  kept = tmp_path / 'kept'
  script = f'''
    mount -t tmpfs -o size={size} tmpfs {workdir}/checkpoints
    start=$(date +%s.%N)
    {_pretrain_line(workdir, 2000)} 2> {tmp_path}/err; rc=$?
    echo "$rc $(echo "$(date +%s.%N) - $start" | bc)"
    cp -a {workdir}/checkpoints {kept}'''
  result = _in_namespace(script)
  rc, seconds = result.stdout.split()[-2:]
  _one_line_error(open(tmp_path / 'err').read(), 2, int(rc), f'saving checkpoint {failed}',
                  'no space left')
  assert float(seconds) < 90
  # Stopped before the next save: a background failure is seen within a few steps
  # (how many depends on the machine's load) and at the latest when saving again.
  assert max(_metric_steps(workdir)) < failed + 10
  shutil.rmtree(workdir / 'checkpoints')
  shutil.copytree(kept, workdir / 'checkpoints')
  assert _steps(workdir) == list(range(10, failed, 10))
  resumed = run_cli('pretrain', *ARGS, '--config.train.steps=30', f'--workdir={workdir}')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  _assert_same_params(straight, workdir, 30)


def _damage(step_dir, how):
  if how == 'metadata':
    open(os.path.join(step_dir, 'meta', 'metadata'), 'w').close()
    return
  if how == 'truncated':  # every data file: which one holds the params varies per save,
    # and halving one can leave the bytes a restore reads intact; none can stay whole
    data = os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd')
    for name in os.listdir(data):
      os.truncate(os.path.join(data, name), 0)
    return
  # Silent corruption that no file size or parser sees: one parameter value changed and the
  # state rewritten as valid Orbax files, the metadata (with the fingerprints) kept.
  import orbax.checkpoint as ocp
  state_dir = os.path.join(step_dir, 'state')
  checkpointer = ocp.StandardCheckpointer()
  state = jax.tree.map(lambda x: np.array(x), checkpointer.restore(state_dir))
  state['params']['block_0']['attn']['wq'][0, 0, 0] += 1.0
  shutil.rmtree(state_dir)
  checkpointer.save(state_dir, state)
  checkpointer.wait_until_finished()


@pytest.mark.slow
@pytest.mark.parametrize('how', ['flipped', 'truncated', 'metadata'])
def test_damaged_latest_checkpoint_in_every_command(straight, tmp_path, how):
  workdir = tmp_path / 'damaged'
  shutil.copytree(straight, workdir)
  _damage(workdir / 'checkpoints' / '30', how)
  tiny = ['--config=configs/tiny.py', f'--workdir={workdir}']
  start = time.time()
  result = run_cli('eval', *tiny, '--max_batches=1', '--json')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'warning: checkpoint' in result.stderr and '/30' in result.stderr
  assert json.loads(result.stdout.splitlines()[-1])['step'] == 20
  assert 'nan' not in result.stdout
  named = run_cli('eval', *tiny, '--step=30')
  _one_line_error(named.stderr, 2, named.returncode, 'checkpoint', '30')
  assert time.time() - start < 120
  if how == 'flipped':  # the one fault no file size or parser sees
    generated = run_cli('generate', *tiny, '--prompt=The', '--max_new_tokens=2', '--json')
    assert generated.returncode == 0 and 'differ from their fingerprints' in generated.stderr
    assert json.loads(generated.stdout.splitlines()[-1])['step'] == 20
    exported = run_cli('export', *tiny, f'--out={tmp_path / "hf"}', '--noparity')
    assert exported.returncode == 0 and 'step 20 written' in exported.stdout
    # Training sets the damaged step aside and trains 21..30 again, bitwise.
    resumed = run_cli('pretrain', *ARGS, '--config.train.steps=30', f'--workdir={workdir}')
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert 'is damaged' in resumed.stdout and 'resumed from step 20' in resumed.stdout
    _assert_same_params(straight, workdir, 30)
    assert any(d.startswith('30.damaged-') for d in os.listdir(workdir / 'checkpoints'))


@pytest.mark.slow
def test_second_run_is_refused_and_a_killed_runs_lock_is_not(straight, tiny_workdir, tmp_path):
  workdir = fresh_workdir(tiny_workdir, tmp_path / 'locked')
  first = start_cli('pretrain', *ARGS, '--config.train.steps=100000', f'--workdir={workdir}')
  try:
    deadline = time.time() + 120
    while not (workdir / 'checkpoints' / '10').is_dir():
      assert time.time() < deadline and first.poll() is None
      time.sleep(0.1)
    second = run_cli('pretrain', *ARGS, '--config.train.steps=30', f'--workdir={workdir}')
    _one_line_error(second.stderr, 2, second.returncode, 'in use by another run',
                    f'pid {first.pid}')
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # The killed run's lock file is still there; its flock went with the process.
  assert (workdir / '.lock').exists()
  latest = _steps(workdir)[-1]
  assert max(_metric_steps(workdir)) >= latest  # usually more: lines the resumed run will train again
  resumed = run_cli('pretrain', *ARGS, f'--config.train.steps={latest + 3}',
                    f'--workdir={workdir}')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  steps = _metric_steps(workdir)
  assert steps == list(range(1, latest + 4)), steps  # each step once
  assert not (workdir / '.lock').exists()


@pytest.mark.slow
def test_bad_paths_and_flags_are_one_line(straight, tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  tiny = '--config=configs/tiny.py'
  for command in ('pretrain', 'eval', 'generate', 'export'):
    result = run_cli(command, tiny, f'--workdir={a_file}', timeout=120)
    _one_line_error(result.stderr, 2, result.returncode, 'is a file, not a directory')
  result = run_cli('pretrain', tiny, f'--workdir={a_file}/sub')
  _one_line_error(result.stderr, 2, result.returncode, 'is a file, not a directory')
  result = run_cli('export', tiny, f'--workdir={straight}', f'--out={a_file}')
  _one_line_error(result.stderr, 2, result.returncode, '--out=', 'is a file')
  result = run_cli('eval', tiny, f'--workdir={straight}', '--step=10',
                   f'--checkpoint={straight}/checkpoints/30')
  _one_line_error(result.stderr, 2, result.returncode, 'disagree')
  result = run_cli('launch', '--num_processes=0', '--', 'pretrain')
  _one_line_error(result.stderr, 2, result.returncode, '--num_processes=0 must be >= 1')
  result = run_cli('describe', tiny, '--num_devices=0')
  _one_line_error(result.stderr, 2, result.returncode, '--num_devices=0 must be >= 1')
  long_doc = tmp_path / 'long.txt'
  long_doc.write_text('the cat sat on the mat. ' * 3000)
  result = run_cli('eval', tiny, f'--workdir={straight}', f'--eval_files={long_doc}',
                   '--max_batches=2', '--batch_size=2')
  _one_line_error(result.stderr, 2, result.returncode, '--max_batches=2 holds 4 windows',
                  'the first document needs')


@pytest.mark.slow
@needs_unshare
def test_read_only_workdir(straight, tmp_path):
  """Training refuses at once; eval (which only reads) works."""
  workdir = tmp_path / 'ro_workdir'
  shutil.copytree(straight, workdir)
  script = f'''
    mount --bind {workdir} {workdir} && mount -o remount,bind,ro {workdir}
    {_pretrain_line(workdir, 40)} 2> {tmp_path}/train.err; echo "train $?"
    {sys.executable} {REPO}/run.py eval --config=configs/tiny.py --workdir={workdir} \
        --max_batches=1 > /dev/null 2> {tmp_path}/eval.err; echo "eval $?"'''
  result = _in_namespace(script)
  codes = dict(line.split() for line in result.stdout.splitlines() if line[:5] in ('train',
                                                                                    'eval '))
  _one_line_error(open(tmp_path / 'train.err').read(), 2, int(codes['train']),
                  'cannot write in --workdir', 'read-only')
  assert codes['eval'] == '0', open(tmp_path / 'eval.err').read()[-2000:]
