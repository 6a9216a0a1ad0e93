"""The train step: sharded = unsharded, accumulation = one big batch."""
import jax
import numpy as np
import pytest

from engine import mesh as mesh_lib
from engine import optimizer
from engine import train_state
from engine import lm_loss
from engine import train_step
from tests.model_helpers import assert_trees_close, assert_updates_agree, mesh_config


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, t = config.train.batch_size, config.data.seq_len
  tokens = rng.integers(8, config.model.vocab_size, (b, t + 1)).astype(np.int32)
  # Two documents per row, and padding (segment 0) at the end of the last row.
  segment_ids = np.ones((b, t), np.int32)
  segment_ids[:, t // 3:] = 2
  segment_ids[-1, -5:] = 0
  positions = np.concatenate([np.arange(t // 3), np.arange(t - t // 3)])[None].repeat(b, 0)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'segment_ids': segment_ids,
          'positions': positions.astype(np.int32)}


def _one_step(config, devices, batch):
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  spec = train_state.ModelSpec(config.model, mesh)
  tx = optimizer.make_optimizer(config.train)
  state, shardings = train_state.create_train_state(spec, tx, config.seed)
  step = train_step.make_train_step(spec, tx, optimizer.learning_rate_schedule(config.train),
                                    shardings, config.train)
  loss_sums = lm_loss.next_token_loss(lambda p, _, b: spec.apply(
      p, b['inputs'], b['positions'], b['segment_ids']), 0.0)
  grads, sums = jax.jit(lambda p, b: train_step.accumulate(
      loss_sums, p, {}, b, config.train.microbatches, mesh))(state['params'], batch)
  ce, count = sums['loss'], sums['count']
  new_state, metrics = step(state, batch)
  return (jax.device_get(new_state['params']), jax.device_get(metrics),
          jax.device_get(grads), float(ce / count))


@pytest.mark.parametrize('optimizer_name', ['adamw', 'muon'])
def test_sharded_step_equals_single_device(optimizer_name):
  assert len(jax.devices()) == 8
  single = mesh_config()
  sharded = mesh_config(data=2, fsdp=2, tensor=2)
  for config in (single, sharded):
    config.train.optimizer = optimizer_name
  batch = _batch(single)
  p1, m1, g1, l1 = _one_step(single, jax.devices()[:1], batch)
  p8, m8, g8, l8 = _one_step(sharded, jax.devices(), batch)
  assert abs(m1['loss'] - m8['loss']) <= 1e-5 * abs(m1['loss'])
  assert abs(l1 - l8) <= 1e-5 * l1
  assert_trees_close(g1, g8, rtol=1e-5)
  # Adam divides by sqrt(v): a gradient entry near 0 turns reduction-order noise
  # into a visible step, so updated params agree to a fraction of one lr step.
  lr = max(single.train.learning_rate,
           single.train.muon_learning_rate if optimizer_name == 'muon' else 0)
  assert_updates_agree(p1, p8, lr)
  assert m1['tokens'] == 8 * 64 - 5


def test_four_microbatches_equal_one_batch():
  batch = _batch(mesh_config())
  whole = mesh_config()
  accumulated = mesh_config()
  accumulated.train.microbatches = 4
  p1, m1, g1, _ = _one_step(whole, jax.devices()[:1], batch)
  p4, m4, g4, _ = _one_step(accumulated, jax.devices()[:1], batch)
  assert abs(m1['loss'] - m4['loss']) <= 1e-6 * m1['loss']
  assert_trees_close(g1, g4, rtol=1e-5)
  assert_updates_agree(p1, p4, whole.train.learning_rate)


def test_initial_loss_is_near_uniform():
  _, metrics, _, _ = _one_step(mesh_config(), jax.devices()[:1], _batch(mesh_config()))
  assert abs(metrics['loss'] - np.log(2048)) < 0.1


def test_mesh_that_does_not_divide_devices_is_a_user_error():
  from configs.errors import UserError
  with pytest.raises(UserError, match='needs 12 devices'):
    mesh_lib.make_mesh(mesh_config(data=3, fsdp=2, tensor=2).mesh, jax.devices())
  with pytest.raises(UserError, match='does not divide 8 devices'):
    mesh_lib.make_mesh(mesh_config(data=-1, fsdp=3).mesh, jax.devices())
