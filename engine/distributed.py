"""Joins a multi-process job (explicit flags, or what JAX detects from SLURM's srun,
Open MPI's mpirun, TPU pods, JAX_COORDINATOR_ADDRESS). CPU processes talk over gloo."""
import os

import jax

from configs.errors import UserError


# What JAX's own cluster detection reads (jax/_src/clusters): the variables that
# say a scheduler started this process, and the one holding the process count.
# SLURM: only inside an srun step; the batch script itself (or a shell under
# salloc) has SLURM_JOB_ID but no SLURM_STEP_NODELIST, and JAX would fail there.
# Open MPI 4 (mpirun/mpiexec); Open MPI 5 (PRRTE) sets neither and is not detected.
_SCHEDULERS = (  # (JAX's name for it, variables that must all be set, process count)
    ('ompi', ('OMPI_MCA_orte_hnp_uri',), 'OMPI_COMM_WORLD_SIZE'),
    ('slurm', ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID'), 'SLURM_NTASKS'),
)


def detect_scheduler(environ=os.environ):
  """(JAX's cluster name, process count) of the scheduler that started this process,
  or (None, None). Open MPI first, as JAX does: mpirun inside a SLURM allocation
  starts its ranks from SLURM steps, so they carry both sets of variables."""
  for name, present, count in _SCHEDULERS:
    if all(k in environ for k in present):
      return name, int(environ.get(count, '1'))
  return None, None


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               heartbeat_timeout_seconds=30, initialization_timeout=120):
  explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if explicit and None in (coordinator_address, num_processes, process_id):
    raise UserError('multi-process needs all of --coordinator_address, --num_processes and '
                    '--process_id (or none of them, to let JAX detect the cluster)')
  scheduler, count = detect_scheduler()
  other = any(k in os.environ for k in ('TPU_WORKER_HOSTNAMES', 'JAX_COORDINATOR_ADDRESS'))
  # One task (`srun --ntasks=1`, `mpirun -np 1`) is a plain single-process run: no
  # coordinator to start, no port to collide with another job's on the same node.
  if not explicit and not other and (scheduler is None or count == 1):
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # Bounded timeouts: a lost process is reported within about a heartbeat
  # timeout instead of the survivors hanging in a collective.
  timeouts = dict(initialization_timeout=initialization_timeout,
                  heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  if explicit:
    # 'deactivate': explicit flags are the whole answer. Otherwise JAX still scans for
    # a cluster to pick the GPU per process, and in every Kubernetes pod (which has
    # KUBERNETES_SERVICE_HOST) warns that the `kubernetes` package is missing.
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               cluster_detection_method='deactivate', **timeouts)
  else:
    # Naming the scheduler found keeps JAX from picking another one whose variables
    # leaked into the environment. Under SLURM/Open MPI JAX gives each process the one
    # GPU numbered by its local rank (JAX_LOCAL_DEVICE_IDS overrides it); on CPU the
    # device count is XLA_FLAGS' as the scheduler passed it on.
    jax.distributed.initialize(cluster_detection_method=scheduler, **timeouts)


def on_first_process(fn):
  """Runs file-writing work (tokenizer, dataset) once; the others wait for it."""
  if jax.process_count() == 1:
    fn()
    return
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    fn()
  multihost_utils.sync_global_devices('on_first_process')
