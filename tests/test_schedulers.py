"""Real schedulers start `run.py` with no multi-process flags: SLURM's srun and
sbatch (a single-node cluster from deploy/slurm/local_cluster.sh, run as root),
Open MPI's mpirun, and the environment deploy/k8s/pretrain.yaml gives its pods.
Each 2-process run (2 devices a process) must equal one process with 4 devices.
CI installs the packages first: apt-get install -y slurm-wlm munge openmpi-bin."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.cli_helpers import REPO, run_cli
from tests.cli_helpers import fresh_workdir as _fresh

pytestmark = pytest.mark.slow
CLUSTER = os.path.join(REPO, 'deploy', 'slurm', 'local_cluster.sh')
STEPS = 15  # the sbatch test needs room for two interruptions and their resumes
ARGS = ['pretrain', '--config=configs/tiny.py', '--config.data.seq_len=64',
        '--config.train.batch_size=8', '--config.train.microbatches=2',  # 4 rows: 1 a device
        '--config.train.log_every=1', '--config.train.eval_every=0',
        '--config.train.eval_batches=1', '--config.train.peak_tflops=1.0',
        '--config.data.num_shards=2',  # the same data order for 1 and 2 processes
        '--config.checkpoint.save_every_steps=3', '--config.checkpoint.keep=5',
        f'--config.train.steps={STEPS}']
LOSS_RTOL = 1e-6  # 2 x 2 devices against 1 x 4: at most 1.3e-7 relative, measured here
INSTALL = 'apt-get install -y slurm-wlm munge openmpi-bin'


def _need(*programs):
  missing = [p for p in programs if not shutil.which(p) and not os.path.exists(f'/usr/sbin/{p}')]
  if missing:
    pytest.skip(f'{", ".join(missing)} not installed (as root: {INSTALL})')


def _env(devices, **extra):
  """This process's environment for a child: `devices` simulated CPU devices per process."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             PYTHONUNBUFFERED='1', **extra)
  return env


def _run(cmd, env, timeout=600):
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  return result


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  steps = [r['step'] for r in records if 'loss' in r]
  assert steps == list(range(1, STEPS + 1)), steps  # every step once, in order
  return {r['step']: r['loss'] for r in records if 'loss' in r}


def _assert_matches_one_process(workdir, reference):
  """Same loss per step as the 1-process run, and 2 processes really took part."""
  a, b = _losses(workdir), _losses(reference)
  for step in b:
    assert abs(a[step] - b[step]) <= LOSS_RTOL * b[step], (step, a[step], b[step])
  data = os.listdir(os.path.join(workdir, 'checkpoints', str(STEPS), 'data'))
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(data), data


def _params(workdir, step):
  """Checkpoint `step`'s saved state as numpy arrays, whatever devices saved it."""
  import jax
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  meta = checkpointer.metadata(path)
  meta = getattr(meta, 'item_metadata', meta)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(checkpointer.restore(path, target))]


@pytest.fixture(scope='module')
def reference(tiny_workdir, tmp_path_factory):
  """The uninterrupted 1-process run (4 devices) every 2-process run must equal."""
  workdir = _fresh(tiny_workdir, tmp_path_factory.mktemp('sched') / 'one')
  result = run_cli(*ARGS, f'--workdir={workdir}',
                   env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture(scope='module')
def slurm():
  """Client environment of a running local cluster; stopped afterwards if started here."""
  _need('srun', 'sbatch', 'scontrol', 'slurmctld', 'slurmd', 'munged')
  if os.geteuid() != 0:
    pytest.skip('the local SLURM cluster (deploy/slurm/local_cluster.sh) runs as root')
  was_running = subprocess.run([CLUSTER, 'status'], capture_output=True).returncode == 0
  start = subprocess.run([CLUSTER, 'start'], capture_output=True, text=True, timeout=120)
  assert start.returncode == 0, start.stdout + start.stderr
  conf = re.search(r'^export SLURM_CONF=(\S+)$', start.stdout, re.M).group(1)
  yield {'SLURM_CONF': conf}
  if not was_running:
    stop = subprocess.run([CLUSTER, 'stop'], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr


@pytest.fixture(scope='module')
def srun_run(slurm, tiny_workdir, tmp_path_factory):
  workdir = _fresh(tiny_workdir, tmp_path_factory.mktemp('sched') / 'srun')
  _run(['srun', '--ntasks=2', sys.executable, 'run.py', *ARGS, f'--workdir={workdir}'],
       _env(2, **slurm))
  return workdir


def test_srun_two_tasks_equal_one_process(srun_run, reference):
  _assert_matches_one_process(srun_run, reference)


@pytest.fixture(scope='module')
def mpirun():
  _need('mpirun')  # before `reference` is built, so a skip costs nothing


def test_mpirun_two_ranks_equal_one_process(mpirun, reference, tiny_workdir, tmp_path):
  workdir = _fresh(tiny_workdir, tmp_path / 'mpi')
  # --oversubscribe: 2 ranks also on a 1-core machine. No MPI calls are made; JAX
  # reads the ranks from Open MPI's environment and talks over gloo.
  _run(['mpirun', '--allow-run-as-root', '--oversubscribe', '-np', '2', '-x', 'XLA_FLAGS',
        sys.executable, 'run.py', *ARGS, f'--workdir={workdir}'], _env(2))
  _assert_matches_one_process(workdir, reference)


def test_one_task_is_a_plain_run(slurm, reference, tmp_path):
  """srun/mpirun with one task, and the batch script itself (SLURM_JOB_ID but no
  step), run one process without a coordinator: the same eval as a plain run."""
  args = [sys.executable, 'run.py', 'eval', f'--workdir={reference}', '--max_batches=2',
          '--json']
  plain = json.loads(_run(args, _env(1)).stdout.splitlines()[-1])
  launchers = [['srun', '--ntasks=1']]
  if shutil.which('mpirun'):
    launchers.append(['mpirun', '--allow-run-as-root', '-np', '1'])
  for launcher in launchers:
    out = json.loads(_run(launcher + args, _env(1, **slurm)).stdout.splitlines()[-1])
    assert (out['loss'], out['tokens']) == (plain['loss'], plain['tokens']), launcher
  # Before detection required an srun step, this failed: 'coordinator_address should
  # be defined' (JAX finds no SLURM_STEP_NODELIST in the batch shell).
  log = str(tmp_path / 'batch.out')
  _run(['sbatch', '--wait', f'--output={log}', '--wrap', ' '.join(args)], _env(1, **slurm))
  with open(log) as f:
    out = json.loads(f.read().splitlines()[-1])
  assert (out['loss'], out['tokens']) == (plain['loss'], plain['tokens'])


def _wait(condition, what, job, env, timeout_s=300):
  deadline = time.time() + timeout_s
  while not condition():
    state = subprocess.run(['scontrol', 'show', 'job', job], env=env, capture_output=True,
                           text=True).stdout
    assert not re.search(r'JobState=(FAILED|CANCELLED|TIMEOUT)', state), state
    assert time.time() < deadline, f'no {what} within {timeout_s} s'
    time.sleep(0.2)


def _checkpoints(workdir):
  path = os.path.join(workdir, 'checkpoints')
  return [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []


def test_sbatch_job_requeued_twice_equals_uninterrupted(slurm, srun_run, tiny_workdir,
                                                        tmp_path):
  """deploy/slurm/train.sbatch stopped twice mid-run, as SLURM does it: the time-limit
  warning (USR1 to the batch shell: the script has training save and requeues the
  job) and `scontrol requeue` (what preemption does). It ends bitwise equal to the
  uninterrupted srun run (same layout: 2 tasks x 2 devices)."""
  workdir = _fresh(tiny_workdir, tmp_path / 'sbatch')
  log = str(tmp_path / 'job.out')
  env = _env(2, PYTHON=sys.executable, **slurm)
  job = _run(['sbatch', '--parsable', '--nodes=1', '--ntasks-per-node=2', f'--output={log}',
              'deploy/slurm/train.sbatch', *ARGS, f'--workdir={workdir}'], env).stdout.strip()
  read_log = lambda: open(log).read() if os.path.exists(log) else ''
  try:
    _wait(lambda: 3 in _checkpoints(workdir), 'checkpoint 3', job, env)
    # Exactly what `#SBATCH --signal=B:USR1@600` delivers 10 minutes before the limit.
    _run(['scancel', '--batch', '--signal=USR1', job], env)
    _wait(lambda: 'resumed from step' in read_log(), 'first resume', job, env)
    resumed = int(re.search(r'resumed from step (\d+)', read_log()).group(1))
    _wait(lambda: max(_checkpoints(workdir)) > resumed, 'a save after the resume', job, env)
    _run(['scontrol', 'requeue', job], env)
    _wait(lambda: 'JobState=COMPLETED' in _run(['scontrol', 'show', 'job', job], env).stdout,
          'completion', job, env)
  finally:
    subprocess.run(['scancel', job], env=env, capture_output=True)
  text = read_log()
  assert 'Restarts=2' in _run(['scontrol', 'show', 'job', job], env).stdout, text[-3000:]
  assert text.count('train.sbatch: saved; requeueing job') == 1, text[-3000:]
  for task in (0, 1):  # both stops were clean saves by every task, not a SIGKILL
    assert len(re.findall(rf'^{task}: pretrain: SIGTERM received; saved step', text,
                          re.M)) == 2, text[-3000:]
  assert len(re.findall(r'^0: pretrain: resumed from step', text, re.M)) == 2, text[-3000:]
  assert _losses(workdir) == _losses(srun_run)
  for a, b in zip(_params(workdir, STEPS), _params(srun_run, STEPS), strict=True):
    np.testing.assert_array_equal(a, b)


def test_kubernetes_manifest_environment_forms_one_job(reference, tiny_workdir, tmp_path):
  """Two local processes started with the command and env deploy/k8s/pretrain.yaml
  gives its pods (pod 0's DNS name -> 127.0.0.1 on a free port); the training
  arguments are this file's instead of the manifest's example."""
  import yaml
  from engine.launch import free_port
  with open(os.path.join(REPO, 'deploy', 'k8s', 'pretrain.yaml')) as f:
    docs = {d['kind']: d for d in yaml.safe_load_all(f)}
  service, job = docs['Service'], docs['Job']
  pod = job['spec']['template']
  container = pod['spec']['containers'][0]
  manifest_env = {e['name']: e for e in container['env']}
  num = int(manifest_env['NUM_PROCESSES']['value'])
  # What makes the names and indices right on a real cluster.
  assert job['spec']['completionMode'] == 'Indexed'
  assert job['spec']['completions'] == job['spec']['parallelism'] == num == 2
  assert service['spec']['clusterIP'] == 'None'
  assert pod['spec']['subdomain'] == service['metadata']['name']
  assert service['spec']['selector'].items() <= pod['metadata']['labels'].items()
  host, port = manifest_env['COORDINATOR_ADDRESS']['value'].split(':')
  assert host == f'{job["metadata"]["name"]}-0.{service["metadata"]["name"]}'
  assert int(port) == service['spec']['ports'][0]['port'] == container['ports'][0][
      'containerPort']
  assert container['workingDir'] == '/app'  # the repository; here REPO

  address = f'127.0.0.1:{free_port()}'
  workdir = _fresh(tiny_workdir, tmp_path / 'k8s')
  procs = []
  for index in range(num):
    env = {'PATH': os.environ['PATH'], 'HOME': os.environ.get('HOME', '/root'),
           # what Kubernetes adds to every pod of this Job
           'HOSTNAME': f'{job["metadata"]["name"]}-{index}',
           'KUBERNETES_SERVICE_HOST': '10.96.0.1', 'KUBERNETES_SERVICE_PORT': '443',
           # the image's interpreter, and CPU devices instead of the pod's GPUs
           'PYTHON': sys.executable,
           'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
    for name, item in manifest_env.items():
      if 'value' in item:
        env[name] = item['value']
      else:  # the one fieldRef: the pod's completion index annotation
        assert 'job-completion-index' in item['valueFrom']['fieldRef']['fieldPath']
        env[name] = str(index)
    env['COORDINATOR_ADDRESS'] = address
    procs.append(subprocess.Popen(container['command'] + ARGS + [f'--workdir={workdir}'],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True))
  try:
    outputs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
    assert 'Kubernetes environment detected' not in out, out[-3000:]  # JAX looked no cluster up
  _assert_matches_one_process(workdir, reference)
