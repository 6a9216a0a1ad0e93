"""LoRA: adapters as a transformation of the params tree (W + scale·A·B), their
checks and shardings, and a sharded LoRA train step equal to one device's."""
import math

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs.errors import UserError
from engine import lm_loss
from engine import mesh as mesh_lib
from engine import optimizer
from engine import restore_params
from engine import train_state
from engine import train_step
from model import lora
from tests.model_helpers import assert_trees_close, assert_updates_agree, mesh_config

ALL = ('wq', 'wk', 'wv', 'wo', 'w_gate', 'w_up', 'w_down')


def _spec(config, devices):
  return train_state.ModelSpec(config.model, mesh_lib.make_mesh(config.mesh, devices))


@pytest.fixture(scope='module')
def single():
  spec = _spec(mesh_config(), jax.devices()[:1])
  base = jax.device_get(jax.jit(spec.init_params)(jax.random.key(0)))
  return spec, base


def _tokens(config, seed=0):
  rng = np.random.default_rng(seed)
  b, t = config.train.batch_size, config.data.seq_len
  tokens = rng.integers(8, config.model.vocab_size, (b, t + 1)).astype(np.int32)
  segment_ids = np.ones((b, t), np.int32)
  segment_ids[:, t // 3:] = 2
  segment_ids[-1, -5:] = 0
  positions = np.concatenate([np.arange(t // 3), np.arange(t - t // 3)])[None].repeat(b, 0)
  loss_mask = (rng.random((b, t)) < 0.5).astype(np.int32) * (segment_ids > 0)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'segment_ids': segment_ids,
          'positions': positions.astype(np.int32), 'loss_mask': loss_mask.astype(np.int32)}


def _random_b(adapters, seed, scale=0.05):
  """Adapters with B random too (a LoRA after some training)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(adapters)
  rng = np.random.default_rng(seed)
  out = []
  for path, x in leaves:
    if path[-1].key == 'b':
      x = (rng.standard_normal(x.shape) * scale).astype(np.float32)
    out.append(np.asarray(x))
  return jax.tree_util.tree_unflatten(treedef, out)


def _logits(spec, params, batch):
  return np.asarray(jax.jit(spec.apply)(params, batch['inputs'], batch['positions'],
                                        batch['segment_ids']))


def test_fresh_adapters_leave_the_model_unchanged(single):
  spec, base = single
  abstract = jax.eval_shape(lambda: base)
  adapters = jax.device_get(lora.init_adapters(jax.random.key(1), abstract, ALL, 4))
  assert sorted(adapters) == ['block_0', 'block_1']
  assert sorted(adapters['block_0']) == ['attn', 'mlp']
  assert sorted(adapters['block_0']['attn']) == ['wk', 'wo', 'wq', 'wv']
  assert sorted(adapters['block_0']['mlp']) == ['w_down', 'w_gate', 'w_up']
  # Shapes: A is (*in, r) and B is (r, *out), per the weight's input/output split.
  shapes = jax.tree.map(lambda x: x.shape, adapters['block_0'])
  assert shapes['attn']['wq'] == {'a': (128, 4), 'b': (4, 4, 32)}
  assert shapes['attn']['wk'] == {'a': (128, 4), 'b': (4, 2, 32)}
  assert shapes['attn']['wo'] == {'a': (4, 32, 4), 'b': (4, 128)}
  assert shapes['mlp']['w_down'] == {'a': (384, 4), 'b': (4, 128)}
  assert shapes['mlp']['w_up'] == {'a': (128, 4), 'b': (4, 384)}
  for block in adapters.values():
    for module in block.values():
      for ab in module.values():
        assert np.all(ab['b'] == 0)
        assert ab['a'].dtype == np.float32 and np.std(ab['a']) > 0
  # A's scale: std 1/sqrt(fan_in).
  a = adapters['block_0']['mlp']['w_down']['a']
  assert abs(np.std(a) * math.sqrt(384) - 1.0) < 0.1
  # Different keys give different A; the same key the same A.
  again = jax.device_get(lora.init_adapters(jax.random.key(1), abstract, ALL, 4))
  other = jax.device_get(lora.init_adapters(jax.random.key(2), abstract, ALL, 4))
  np.testing.assert_array_equal(again['block_1']['attn']['wq']['a'],
                                adapters['block_1']['attn']['wq']['a'])
  assert not np.array_equal(other['block_1']['attn']['wq']['a'],
                            adapters['block_1']['attn']['wq']['a'])
  # B == 0: merged params equal the base bitwise, and so do the logits.
  merged = jax.device_get(jax.jit(lambda p, a: lora.merge(p, a, 4.0))(base, adapters))
  assert jax.tree.structure(merged) == jax.tree.structure(base)
  for x, y in zip(jax.tree.leaves(base), jax.tree.leaves(merged)):
    np.testing.assert_array_equal(x, y)
  batch = _tokens(mesh_config())
  np.testing.assert_array_equal(_logits(spec, base, batch), _logits(spec, merged, batch))
  assert lora.count(adapters) == 2 * sum(
      (128 * 4 + 4 * n) for n in (128, 64, 64)) + 2 * (128 * 4 + 4 * 128) + 2 * 2 * (
          128 * 4 + 4 * 384) + 2 * (384 * 4 + 4 * 128)


def test_merge_is_w_plus_scale_a_b(single):
  spec, base = single
  rank, scale = 4, 16.0 / 4
  adapters = _random_b(jax.device_get(lora.init_adapters(
      jax.random.key(1), jax.eval_shape(lambda: base), ALL, rank)), seed=0)
  merged = jax.device_get(jax.jit(lambda p, a: lora.merge(p, a, scale))(base, adapters))
  # By hand, for every adapted weight: W + s · (A reshaped to a matrix) @ B, reshaped back.
  by_hand = jax.tree.map(np.array, base)
  for block in ('block_0', 'block_1'):
    for module, names in adapters[block].items():
      for name, ab in names.items():
        w = np.asarray(base[block][module][name], np.float64)
        n_in = lora.TARGETS[name]
        a = np.asarray(ab['a'], np.float64).reshape(math.prod(w.shape[:n_in]), rank)
        b = np.asarray(ab['b'], np.float64).reshape(rank, math.prod(w.shape[n_in:]))
        by_hand[block][module][name] = (w + scale * (a @ b).reshape(w.shape)).astype(np.float32)
  for path, x in jax.tree_util.tree_leaves_with_path(merged):
    y = by_hand
    for key in path:
      y = y[key.key]
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=str(path))
  # The output projection wo has two input axes (heads, head_dim): checked explicitly.
  wo, ab = base['block_1']['attn']['wo'], adapters['block_1']['attn']['wo']
  want = wo + scale * np.einsum('hdr,re->hde', ab['a'], ab['b'])
  np.testing.assert_allclose(merged['block_1']['attn']['wo'], want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(merged['block_1']['attn']['wo'], wo)  # the delta is not negligible
  # Unadapted params are the base's, bitwise.
  for key in ('embed', 'lm_head'):
    np.testing.assert_array_equal(merged[key], base[key])
  np.testing.assert_array_equal(merged['block_0']['attn_norm']['scale'],
                                base['block_0']['attn_norm']['scale'])
  # Logits of the merged tree equal the model run with the hand-merged params.
  batch = _tokens(mesh_config())
  got, want_logits = _logits(spec, merged, batch), _logits(spec, by_hand, batch)
  np.testing.assert_allclose(got, want_logits, rtol=1e-4, atol=1e-4 * np.abs(want_logits).max())
  assert np.abs(got - _logits(spec, base, batch)).max() > 1e-3
  # Only some targets: only those weights change.
  only = {blk: {'attn': {'wq': adapters[blk]['attn']['wq']}} for blk in ('block_0', 'block_1')}
  partial = jax.device_get(lora.merge(base, only, scale))
  np.testing.assert_array_equal(partial['block_0']['attn']['wk'], base['block_0']['attn']['wk'])
  assert not np.array_equal(partial['block_0']['attn']['wq'], base['block_0']['attn']['wq'])
  # merge never mutates the base tree it was given.
  np.testing.assert_array_equal(base['block_1']['attn']['wo'], wo)


def test_rank_and_target_checks(single):
  _, base = single
  abstract = jax.eval_shape(lambda: base)
  # Smallest side over all targets: wk/wv are (128 -> 2·32 = 64).
  lora.check_rank(abstract, ALL, 1)
  lora.check_rank(abstract, ALL, 64)
  for rank in (0, -1, 65, 100000):
    with pytest.raises(UserError, match=rf'sft.lora_rank={rank} must be in 1..64'):
      lora.check_rank(abstract, ALL, rank)
  # Only wo and w_down: the smaller sides are 128.
  lora.check_rank(abstract, ('wo', 'w_down'), 128)
  with pytest.raises(UserError, match=r'must be in 1\.\.128 \(the smaller side of block_0'):
    lora.check_rank(abstract, ('wo', 'w_down'), 129)
  with pytest.raises(UserError, match=r"unknown LoRA target\(s\) \['nope'\] in "
                     'sft.lora_targets; choose from wq, wk'):
    lora.target_paths(abstract, ('wq', 'nope'))
  with pytest.raises(UserError, match='unknown LoRA target'):
    lora.target_paths(abstract, ())
  with pytest.raises(UserError, match='unknown LoRA target'):
    lora.check_rank(abstract, ('embed',), 4)
  assert lora.target_paths(abstract, ('wq', 'w_up')) == [
      ('block_0', 'attn', 'wq'), ('block_0', 'mlp', 'w_up'),
      ('block_1', 'attn', 'wq'), ('block_1', 'mlp', 'w_up')]


def test_adapter_shardings_follow_the_adapted_weights():
  config = mesh_config(data=2, fsdp=2, tensor=2)
  spec = _spec(config, jax.devices())
  shardings = restore_params.adapter_shardings(spec, ALL)
  got = jax.tree.map(lambda s: s.spec, shardings['block_0'])
  # Logical axes: embed -> fsdp, heads/kv_heads/mlp -> tensor, the rank axis unsplit.
  assert got['attn']['wq'] == {'a': PartitionSpec('fsdp', None),
                               'b': PartitionSpec(None, 'tensor', None)}
  assert got['attn']['wk'] == got['attn']['wv'] == got['attn']['wq']
  assert got['attn']['wo'] == {'a': PartitionSpec('tensor', None, None),
                               'b': PartitionSpec(None, 'fsdp')}
  assert got['mlp']['w_gate'] == got['mlp']['w_up'] == {'a': PartitionSpec('fsdp', None),
                                                        'b': PartitionSpec(None, 'tensor')}
  assert got['mlp']['w_down'] == {'a': PartitionSpec('tensor', None),
                                  'b': PartitionSpec(None, 'fsdp')}
  # In general: A keeps the weight's input axes, B its output axes.
  for block in ('block_0', 'block_1'):
    for module, names in shardings[block].items():
      for name, ab in names.items():
        w_spec = tuple(spec.param_shardings[block][module][name].spec)
        w_spec += (None,) * (len(spec.logical_axes[block][module][name]) - len(w_spec))
        n_in = lora.TARGETS[name]
        assert tuple(ab['a'].spec)[:n_in] == w_spec[:n_in]
        assert tuple(ab['b'].spec)[1:1 + len(w_spec) - n_in] == w_spec[n_in:]
  # Adapters really are placed like that: a device holds half of A's d_model rows.
  adapters = jax.jit(lambda k: lora.init_adapters(k, jax.eval_shape(
      spec.init_params, jax.random.key(0)), ALL, 8), out_shardings=shardings)(jax.random.key(0))
  shard = adapters['block_0']['attn']['wq']['a'].addressable_shards[0]
  assert shard.data.shape == (64, 8)


def _lora_step(config, devices, base, adapters, batch, scale):
  spec = _spec(config, devices)
  mesh = spec.mesh
  tx = optimizer.make_optimizer(config.train)
  schedule = optimizer.learning_rate_schedule(config.train)
  targets = ALL
  param_shardings = restore_params.adapter_shardings(spec, targets)
  frozen = jax.device_put(base, spec.param_shardings)
  state, shardings = train_state.state_from_params(
      jax.device_put(adapters, param_shardings), param_shardings, tx, mesh)

  def apply(params, frozen, batch):  # as posttrain/sft.py's SftStage.apply for lora
    return spec.apply(lora.merge(frozen, params, scale), batch['inputs'], batch['positions'],
                      batch['segment_ids'])

  loss_sums = lm_loss.next_token_loss(apply, 0.0)
  step = train_step.make_step(loss_sums, tx, schedule, shardings, mesh,
                              config.train.microbatches, spec.param_shardings)
  grads, sums = jax.jit(lambda p, f, b: train_step.accumulate(
      loss_sums, p, f, b, config.train.microbatches, mesh))(state['params'], frozen, batch)
  new_state, metrics = step(state, frozen, batch)
  assert sorted(new_state) == ['opt_state', 'params', 'step']
  assert int(new_state['step']) == 1
  return (jax.device_get(new_state['params']), jax.device_get(metrics), jax.device_get(grads),
          float(sums['loss'] / sums['count']), jax.device_get(frozen))


def test_sharded_lora_step_equals_single_device_and_trains_only_adapters(single):
  assert len(jax.devices()) == 8
  _, base = single
  rank, scale = 8, 16.0 / 8
  adapters = _random_b(jax.device_get(lora.init_adapters(
      jax.random.key(1), jax.eval_shape(lambda: base), ALL, rank)), seed=1, scale=0.02)
  one, eight = mesh_config(), mesh_config(data=2, fsdp=2, tensor=2)
  batch = _tokens(one, seed=3)
  p1, m1, g1, l1, f1 = _lora_step(one, jax.devices()[:1], base, adapters, batch, scale)
  p8, m8, g8, l8, f8 = _lora_step(eight, jax.devices(), base, adapters, batch, scale)
  # The loss counts only loss_mask tokens.
  assert m1['tokens'] == m8['tokens'] == batch['loss_mask'].sum()
  assert abs(m1['loss'] - l1) <= 1e-6 * l1
  assert abs(m1['loss'] - m8['loss']) <= 1e-5 * abs(m1['loss'])
  assert abs(l1 - l8) <= 1e-5 * l1
  assert abs(m1['loss'] - np.log(2048)) < 0.5
  assert_trees_close(g1, g8, rtol=1e-5)
  assert_updates_agree(p1, p8, one.train.learning_rate)
  # Only the adapters are state; both A and B moved (B != 0, so A has a gradient).
  assert jax.tree.structure(p1) == jax.tree.structure(adapters)
  for (path, new), old in zip(jax.tree_util.tree_leaves_with_path(p1),
                              jax.tree.leaves(adapters)):
    assert np.abs(new - old).max() > 0.1 * one.train.learning_rate, path
  # The base is frozen: bitwise what it was, on both meshes.
  for x, y, z in zip(jax.tree.leaves(base), jax.tree.leaves(f1), jax.tree.leaves(f8)):
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, z)


def test_fresh_lora_first_step_moves_only_b(single):
  """From init (B == 0) A has no gradient: the first update changes B only."""
  _, base = single
  adapters = jax.device_get(lora.init_adapters(
      jax.random.key(1), jax.eval_shape(lambda: base), ALL, 4))
  config = mesh_config()
  config.train.weight_decay = 0.0
  batch = _tokens(config, seed=4)
  p1, m1, g1, _, _ = _lora_step(config, jax.devices()[:1], base, adapters, batch, 4.0)
  for path, g in jax.tree_util.tree_leaves_with_path(g1):
    if path[-1].key == 'a':
      assert np.all(g == 0), path
    else:
      assert np.abs(g).max() > 0, path
  for (path, new), old in zip(jax.tree_util.tree_leaves_with_path(p1),
                              jax.tree.leaves(adapters)):
    if path[-1].key == 'a':
      np.testing.assert_array_equal(new, old)
    else:
      assert np.abs(new).max() > 0
