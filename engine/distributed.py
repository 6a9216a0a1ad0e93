"""Joins a multi-process job (explicit flags, or what JAX detects from SLURM,
TPU pods, Kubernetes, ...). CPU processes talk over gloo."""
import os

import jax

from configs.errors import UserError


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               heartbeat_timeout_seconds=30, initialization_timeout=120):
  explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if explicit and None in (coordinator_address, num_processes, process_id):
    raise UserError('multi-process needs all of --coordinator_address, --num_processes and '
                    '--process_id (or none of them, to let JAX detect the cluster)')
  detected = any(k in os.environ for k in ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES',
                                           'JAX_COORDINATOR_ADDRESS'))
  if not explicit and not detected:
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # Bounded timeouts: a lost process is reported within about a heartbeat
  # timeout instead of the survivors hanging in a collective.
  timeouts = dict(initialization_timeout=initialization_timeout,
                  heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **timeouts)
  else:
    jax.distributed.initialize(**timeouts)


def on_first_process(fn):
  """Runs file-writing work (tokenizer, dataset) once; the others wait for it."""
  if jax.process_count() == 1:
    fn()
    return
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    fn()
  multihost_utils.sync_global_devices('on_first_process')
