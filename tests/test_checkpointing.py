"""Checkpoints restore onto another mesh; a damaged latest one is skipped."""
import os

import jax
import numpy as np
import pytest

from configs import tiny
from engine import checkpointing
from engine.checkpoint_steps import finished_steps
from engine import mesh as mesh_lib
from engine import optimizer
from engine import train_state
from tests.cli_helpers import fresh_workdir, run_cli


def _setup(mesh_axes, devices, optimizer_name='adamw'):
  config = tiny.get_config()
  config.train.optimizer = optimizer_name
  for axis, size in {'data': 1, 'fsdp': 1, 'tensor': 1, **mesh_axes}.items():
    config.mesh[axis] = size
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  spec = train_state.ModelSpec(config.model, mesh)
  return config, spec, optimizer.make_optimizer(config.train)


@pytest.mark.parametrize('optimizer_name', ['adamw', 'muon'])
def test_restore_onto_a_different_mesh(tmp_path, optimizer_name):
  config, spec, tx = _setup({'fsdp': 4, 'data': 2}, jax.devices(), optimizer_name)
  state, _ = train_state.create_train_state(spec, tx, seed=3)
  # One update, so the optimizer state holds more than its zeros.
  grads = jax.tree.map(lambda p: jax.numpy.full_like(p, 0.01), state['params'])
  _, opt_state = tx.update(grads, state['opt_state'], state['params'])
  state = dict(state, opt_state=opt_state)
  manager = checkpointing.make_manager(str(tmp_path), config.checkpoint)
  checkpointing.save(manager, 1, state, {'next': 1}, {'config': {}}, force=True)
  manager.wait_until_finished()
  saved = jax.device_get(state)
  for axes, devices in [({'data': 2, 'tensor': 2}, jax.devices()[:4]),
                        ({}, jax.devices()[:1]),
                        ({'data': 2, 'fsdp': 2, 'tensor': 2}, jax.devices())]:
    _, other_spec, other_tx = _setup(axes, devices, optimizer_name)
    abstract, _ = train_state.abstract_train_state(other_spec, other_tx)
    restored, data_state, _ = checkpointing.restore(manager, 1, abstract)
    assert data_state == {'next': 1}
    for x, y in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
      np.testing.assert_array_equal(x, np.asarray(y))
    wq = restored['params']['block_0']['attn']['wq']
    assert wq.sharding.mesh.shape == other_spec.mesh.shape
  manager.close()


@pytest.mark.parametrize('how', ['emptied', 'cut'])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tiny_workdir, tmp_path, how):
  workdir = fresh_workdir(tiny_workdir, tmp_path / 'w')
  args = ['--config=configs/tiny.py', '--config.data.seq_len=64', '--config.train.batch_size=8',
          '--config.train.eval_every=0', '--config.train.eval_batches=1',
          '--config.checkpoint.save_every_steps=2', '--config.train.peak_tflops=1.0',
          f'--workdir={workdir}']
  assert run_cli('pretrain', *args, '--config.train.steps=4').returncode == 0
  state_dir = workdir / 'checkpoints' / '4' / 'state'
  arrays = sorted((os.path.getsize(os.path.join(root, name)), os.path.join(root, name))
                  for root, _, names in os.walk(state_dir) for name in names
                  if name not in ('_METADATA', '_CHECKPOINT_METADATA', 'manifest.ocdbt'))
  if how == 'emptied':  # every array file of step 4
    for _, path in arrays:
      open(path, 'wb').close()
  else:  # the largest one cut short: one array's read fails while the others' are under way
    os.truncate(arrays[-1][1], arrays[-1][0] * 3 // 4)
  result = run_cli('pretrain', *args, '--config.train.steps=5')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'checkpoint 4 is unreadable (' in result.stdout
  assert 'resumed from step 2' in result.stdout
  # The fallback's one warning line is all it prints: no abandoned-coroutine tracebacks.
  assert 'Exception ignored' not in result.stderr and 'Traceback' not in result.stderr, \
      result.stderr[-3000:]
  assert 'unreadable' not in result.stderr


def test_finished_steps_lists_only_steps_with_metadata(tmp_path):
  root = tmp_path / 'checkpoints'
  for name, with_meta in (('100', True), ('20', True), ('300', False),
                          ('400.orbax-checkpoint-tmp-7', True)):
    (root / name / 'meta').mkdir(parents=True)
    if with_meta:
      (root / name / 'meta' / 'metadata').write_text('{}')
  assert finished_steps(str(tmp_path)) == [20, 100]
  assert finished_steps(str(tmp_path / 'nowhere')) == []
