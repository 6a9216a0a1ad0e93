"""Reward model and DPO: one training step on 8 simulated devices (data=2, fsdp=2,
tensor=2), and one of 4 microbatches (gradient accumulation), each equals the plain step
on 1 device: metrics, gradients, updates."""
import jax
import numpy as np
import pytest

from data_pipeline import preference
from data_pipeline import preference_embedded
from engine import mesh as mesh_lib
from engine import optimizer
from engine import train_state
from engine import train_step
from model import lora
from model import scalar_head
from posttrain import dpo
from posttrain import reward
from posttrain.trainable import Trainable
from tests.model_helpers import (LN2, assert_trees_close, assert_updates_agree, mesh_config,
                                  single_spec)


def _mesh_config(**mesh):
  config = mesh_config(**mesh)
  config.sft.lora_rank = 4
  return config


@pytest.fixture(scope='module')
def mesh_inputs(tiny_tokenizer):
  config = _mesh_config()
  spec = single_spec(config)
  base = jax.device_get(jax.jit(spec.init_params)(jax.random.key(0)))
  pairs = preference_embedded.validation_pairs()[:80:5]
  examples, stats = preference.tokenize_pairs(pairs, tiny_tokenizer, config.data.seq_len)
  assert len(examples) >= 8 and stats['truncated'] > 0
  batch = preference.eval_batches(examples[:8], 8)[0]
  assert (batch['segment_ids'][:, :, -1] > 0).any()  # some rows are truncated at seq_len
  batch['margin'] = np.repeat(np.linspace(0.0, 0.7, 8, dtype=np.float32)[:, None], 2, 1)
  return base, batch


def _step(config, devices, params, param_shardings_fn, frozen, frozen_shardings_fn,
          loss_sums_fn, batch):
  spec = train_state.ModelSpec(config.model, mesh_lib.make_mesh(config.mesh, devices))
  mesh = spec.mesh
  tx = optimizer.make_optimizer(config.train)
  schedule = optimizer.learning_rate_schedule(config.train)
  param_shardings = param_shardings_fn(spec)
  frozen_shardings = frozen_shardings_fn(spec)
  frozen = jax.device_put(frozen, frozen_shardings)
  state, shardings = train_state.state_from_params(
      jax.device_put(params, param_shardings), param_shardings, tx, mesh)
  loss_sums = loss_sums_fn(spec, config)
  microbatches = config.train.microbatches
  grads, _ = train_step.with_mesh(mesh, jax.jit(lambda p, f, b: train_step.accumulate(
      loss_sums, p, f, b, microbatches, mesh)))(state['params'], frozen, batch)
  step = train_step.make_step(loss_sums, tx, schedule, shardings, mesh, microbatches,
                              frozen_shardings)
  new_state, metrics = step(state, frozen, batch)
  assert int(new_state['step']) == 1
  return jax.device_get(new_state['params']), jax.device_get(metrics), jax.device_get(grads)


# The other run: the batch's 8 pairs over 8 devices, or as 4 microbatches of 2 pairs.
OTHER = {'8 devices': ({'data': 2, 'fsdp': 2, 'tensor': 2}, 1), '4 microbatches': ({}, 4)}


def _compare(run, other):
  mesh_kw, microbatches = OTHER[other]
  one, eight = _mesh_config(), _mesh_config(**mesh_kw)
  eight.train.microbatches = microbatches
  p1, m1, g1 = run(one, jax.devices()[:1])
  p8, m8, g8 = run(eight, jax.devices()[:eight.mesh.data * eight.mesh.fsdp * eight.mesh.tensor])
  assert sorted(m1) == sorted(m8)
  for key in m1:
    scale = max(abs(float(m1[key])), 1e-3)
    assert abs(float(m1[key]) - float(m8[key])) <= 1e-5 * scale, (key, m1[key], m8[key])
  assert_trees_close(g1, g8, rtol=1e-5, unread_zero=True)
  assert_updates_agree(p1, p8, one.train.learning_rate)
  return m1, p1


@pytest.mark.parametrize('other', sorted(OTHER))
def test_sharded_or_accumulated_reward_step_equals_single_device(mesh_inputs, other):
  assert len(jax.devices()) == 8
  base, batch = mesh_inputs
  rng = np.random.default_rng(1)
  head = {'w': (rng.standard_normal(128) * 0.5).astype(np.float32), 'b': np.float32(0.1)}

  def run(config, devices):
    def loss_sums_fn(spec, config):  # as RewardStage, full
      t = Trainable('full', spec, base, config.sft)
      scores = reward.pair_scores_fn(spec, t.model_params)
      return lambda p, f, b: reward.bradley_terry_sums(scores(p, f, b), b, 0.01, True)
    return _step(config, devices, {'lm': base, 'head': head},
                 lambda spec: {'lm': spec.param_shardings,
                               'head': scalar_head.shardings(spec.mesh)},
                 {}, lambda spec: {}, loss_sums_fn, batch)
  metrics, params = _compare(run, other)
  assert metrics['tokens'] == 8  # pairs
  assert 0 < metrics['loss'] and np.isfinite(metrics['loss'])
  assert metrics['reward_min'] < metrics['reward_mean'] < metrics['reward_max']
  assert np.abs(params['head']['w'] - head['w']).max() > 0


@pytest.mark.parametrize('other', sorted(OTHER))
def test_sharded_or_accumulated_dpo_step_equals_single_device(mesh_inputs, other,
                                                              method='lora'):
  base, batch = mesh_inputs
  config = _mesh_config()
  rng = np.random.default_rng(2)
  if method == 'lora':  # trained adapters: policy != reference (the base, adapters off)
    adapters = jax.device_get(lora.init_adapters(jax.random.key(1), jax.eval_shape(
        lambda: base), tuple(config.sft.lora_targets), config.sft.lora_rank))
    policy = jax.tree_util.tree_map_with_path(
        lambda path, x: (rng.standard_normal(x.shape) * 0.05).astype(np.float32)
        if path[-1].key == 'b' else x, adapters)
  else:  # a policy moved away from its frozen copy
    policy = jax.tree.map(
        lambda x: x + (rng.standard_normal(x.shape) * 0.01).astype(np.float32), base)

  def run(config, devices):

    def loss_sums_fn(spec, config):  # DpoStage._loss_sums: one vmapped forward, two params
      t = Trainable(method, spec, base, config.sft, keep_reference=True)
      stage = dpo.DpoStage.__new__(dpo.DpoStage)  # its methods, without loading data
      stage.trainable, stage.spec, stage.config = t, spec, config
      return stage._loss_sums
    return _step(config, devices, policy,
                 lambda spec: Trainable(method, spec, base, config.sft).param_shardings,
                 base, lambda spec: spec.param_shardings, loss_sums_fn, batch)
  metrics, _ = _compare(run, other)
  assert metrics['tokens'] == 8
  assert metrics['rewards/margins'] != 0.0 and abs(metrics['loss'] - LN2) > 1e-4
  assert metrics['logps/chosen'] < 0
