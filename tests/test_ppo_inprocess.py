"""The PPO stage in process, on the tiny pretrain and reward workdirs: the rollout equal
to `decode.generate`, where the reward lands in the stage's own scoring, 8 simulated
devices equal to 1 for one iteration, and a toy reward that PPO raises."""
import contextlib
import types

import numpy as np
import pytest

from tests.ppo_helpers import by_step, ppo_roles

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def roles(tiny_workdir, tmp_path_factory):
  return ppo_roles(tiny_workdir, tmp_path_factory)


def _config(steps=1, mesh=(1, 1, 1), **overrides):
  from configs import ppo_tiny
  config = ppo_tiny.get_config()
  config.train.steps = steps
  config.train.batch_size = 4
  config.ppo.minibatches = 2
  config.ppo.epochs = 1
  config.ppo.max_new_tokens = 8
  config.train.peak_tflops = 1
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  for key, value in overrides.items():
    section, name = key.split('__')
    config[section][name] = value
  return config


@contextlib.contextmanager
def _devices(n):
  """make_mesh over the first n of the 8 simulated devices (the stage asks for all)."""
  import jax
  from engine import mesh as mesh_lib
  make_mesh = mesh_lib.make_mesh
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(mesh_lib, 'make_mesh',
               lambda cfg, devices=None: make_mesh(cfg, jax.devices()[:n]))
    yield


def _stage(config, workdir, roles, devices):
  from posttrain.ppo import PpoStage
  with _devices(devices):
    return PpoStage(config, str(workdir), roles['p'], roles['r'])


def _one_iteration(stage):
  """Runs one PPO iteration as the engine does; returns what it sampled and produced.
  The seam: posttrain.ppo.with_mesh wraps the three jitted phases, in the order rollout,
  score, train; the first one's inputs and outputs are recorded."""
  import jax
  import jax.numpy as jnp
  from data_pipeline.global_batch import make_global_batch
  from engine import train_state
  from posttrain import ppo as ppo_mod
  state, shardings = train_state.state_from_params(
      jax.tree.map(jnp.copy, stage.start_params()), stage.param_shardings, stage.tx,
      stage.mesh, stage.extra)
  start = jax.device_get(state['params'])
  batch = make_global_batch(next(stage.data_iter), stage.mesh)
  seen, made = [], []
  original = ppo_mod.with_mesh

  def recording(mesh, jitted):
    call = original(mesh, jitted)
    index = len(made)
    made.append(index)

    def record(*args):
      out = call(*args)
      if index == 0:
        prompt, length, key = args[2:]
        seen.append((jax.device_get((prompt, length, jax.random.key_data(key))),
                     jax.device_get(out)))
      return out
    return record

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(ppo_mod, 'with_mesh', recording)
    step = stage.make_step_fn(shardings)
  new_state, metrics = step(state, stage.frozen, batch)
  assert made == [0, 1, 2] and len(seen) == 1
  (prompt, length, key), (tokens, counts) = seen[0]
  return {'start': start, 'batch': jax.device_get(batch), 'prompt': prompt, 'length': length,
          'key': key, 'tokens': tokens, 'counts': counts,
          'metrics': jax.device_get(metrics), 'params': jax.device_get(new_state['params']),
          'extra': jax.device_get(new_state['extra'])}


@pytest.fixture(scope='module')
def one_iteration(roles):
  """One iteration on 1 device and on 8 (data=2, fsdp=2, tensor=2), same data and seed."""
  import jax
  assert len(jax.devices()) == 8
  out = {}
  for n, mesh in ((1, (1, 1, 1)), (8, (2, 2, 2))):
    stage = _stage(_config(mesh=mesh), roles['root'] / f'inproc{n}', roles, n)
    assert stage.mesh.devices.size == n
    out[n] = (stage, _one_iteration(stage))
  return out


# --- (c) the rollout is decode.generate ------------------------------------------------------

def test_rollout_tokens_equal_generate_for_the_same_params_prompt_and_key(one_iteration):
  import jax
  from flax import nnx
  from data_pipeline import chat_template
  from model import decode
  stage, it = one_iteration[1]
  cfg = stage.config.ppo
  # The key the step used is the first of three split from the state's RNG key, which
  # starts as key(seed + 1); the prompt and lengths are the batch's.
  want_key = jax.random.split(jax.random.key(stage.config.seed + 1), 3)[0]
  np.testing.assert_array_equal(it['key'], jax.random.key_data(want_key))
  np.testing.assert_array_equal(it['prompt'], it['batch']['prompt'])
  np.testing.assert_array_equal(it['length'], it['batch']['length'][:, 0])
  eot = stage.tokenizer.chat_ids[chat_template.END_OF_TURN]

  @jax.jit
  def generate(params, prompt, length, key):
    model = nnx.merge(stage.spec.graphdef, params)
    return decode.generate(model, prompt, length, key, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_k=0, top_p=cfg.top_p, eos_id=eot)

  with jax.set_mesh(stage.mesh):
    tokens, counts = jax.device_get(generate(it['start']['actor'], it['batch']['prompt'],
                                             it['batch']['length'][:, 0], want_key))
  assert tokens.shape == (4, cfg.max_new_tokens)
  np.testing.assert_array_equal(it['tokens'], tokens)
  np.testing.assert_array_equal(it['counts'], counts)
  assert np.all((counts >= 1) & (counts <= cfg.max_new_tokens))
  for row in range(4):  # nothing after a row's end
    assert np.all(tokens[row, counts[row]:] == 0)
  # A different key samples something else (the comparison is not vacuous).
  with jax.set_mesh(stage.mesh):
    other, _ = jax.device_get(generate(it['start']['actor'], it['batch']['prompt'],
                                       it['batch']['length'][:, 0], jax.random.key(12345)))
  assert not np.array_equal(other, tokens)


# --- where the reward lands, in the stage's own scoring ----------------------------------------

def test_score_puts_the_reward_on_the_last_response_token(one_iteration):
  """PpoStage._score on hand-made answers: stopped at end-of-turn (after 3 tokens, at
  once) and cut at max_new_tokens (one with a repeated 4-gram). At iteration 0 the KL is
  exactly 0, so the only reward is the score at last_index, and with next value 0 there
  the return at the last response token is the score itself. The reward model's score is
  replaced by 10, 11, 12, 13 per row (posttrain.ppo's `scalar_head.scores`), so ppo_tiny's
  rule terms show: −1 without end-of-turn, −0.5 for a repeated 4-gram."""
  import jax
  import jax.numpy as jnp
  from data_pipeline import chat_template
  from engine import train_state
  from posttrain import ppo as ppo_mod
  stage, it = one_iteration[1]
  assert stage.config.ppo.missing_eot_penalty == 1.0 and stage.config.ppo.repeat_penalty == 0.5
  eot = stage.tokenizer.chat_ids[chat_template.END_OF_TURN]
  assert eot not in range(50, 54) and eot not in range(101, 109)
  tokens = np.array([[101, 102, eot, 0, 0, 0, 0, 0],
                     [101, 102, 103, 104, 105, 106, 107, 108],
                     [eot, 0, 0, 0, 0, 0, 0, 0],
                     [50, 51, 52, 53, 50, 51, 52, 53]], np.int32)
  counts = np.array([3, 8, 1, 8], np.int32)
  want = np.array([10.0, 11.0 - 1.0, 12.0, 13.0 - 1.0 - 0.5], np.float32)
  state, _ = train_state.state_from_params(
      jax.tree.map(jnp.copy, stage.start_params()), stage.param_shardings, stage.tx,
      stage.mesh, stage.extra)
  prompt, length = it['batch']['prompt'], it['batch']['length']
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(ppo_mod, 'scalar_head', types.SimpleNamespace(
        scores=lambda head, hidden, segment_ids: jnp.arange(10.0, 14.0)[:, None]))
    with jax.set_mesh(stage.mesh):
      batch, metrics = jax.device_get(jax.jit(stage._score)(
          state, stage.frozen, prompt, length, tokens, counts, jnp.ones(4, jnp.float32)))
  assert metrics['objective/kl'] == 0.0
  assert metrics['objective/reward_model_score'] == pytest.approx(11.5)
  assert metrics['objective/scores'] == pytest.approx(want.mean())
  assert metrics['end_of_turn_rate'] == 0.5 and metrics['repeat_4gram_rate'] == 0.25
  assert metrics['response_length'] == pytest.approx(counts.mean())
  mask, adv, ret = batch['mask'], batch['advantages'], batch['returns']
  for row in range(4):
    n, count = int(length[row, 0]), int(counts[row])
    last = n + count - 2
    assert mask[row].sum() == count
    np.testing.assert_array_equal(np.flatnonzero(mask[row]), np.arange(n - 1, last + 1))
    assert batch['seq'][row, last + 1] == tokens[row, count - 1]
    np.testing.assert_allclose(ret[row, last], want[row], rtol=1e-5)
    assert np.all(ret[row, mask[row] == 0] == 0)
  assert np.count_nonzero(adv) == counts.sum()
  assert set(zip(*np.nonzero(adv))) == set(zip(*np.nonzero(mask)))


# --- (e) 8 simulated devices = 1 device ------------------------------------------------------

def _assert_updates_agree(start, a, b, lr):
  """Adam's first steps are ~lr·sign(g): where g is ~0, float noise flips the sign."""
  import jax
  diffs = np.concatenate([np.abs(x - y).ravel() for x, y in zip(jax.tree.leaves(a),
                                                                jax.tree.leaves(b))])
  moved = np.concatenate([np.abs(x - s).ravel() for x, s in zip(jax.tree.leaves(a),
                                                                jax.tree.leaves(start))])
  assert np.mean(diffs <= 1e-3 * lr) >= 0.999, np.mean(diffs <= 1e-3 * lr)
  assert diffs.max() <= 4 * lr, diffs.max()  # two updates (minibatches=2)
  assert moved.max() > 0.5 * lr  # it did train


def test_eight_devices_equal_one_for_one_iteration(one_iteration):
  import jax
  (stage1, one), (stage8, eight) = one_iteration[1], one_iteration[8]
  assert dict(stage8.mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  np.testing.assert_array_equal(one['batch']['prompt'], eight['batch']['prompt'])
  # The same prompts, key and params sample the same answers on both meshes.
  np.testing.assert_array_equal(one['tokens'], eight['tokens'])
  np.testing.assert_array_equal(one['counts'], eight['counts'])
  m1, m8 = one['metrics'], eight['metrics']
  assert sorted(m1) == sorted(m8)
  assert m1['objective/kl'] == m8['objective/kl'] == 0.0
  tokens = int(np.sum(one['counts']))
  for name in sorted(m1):
    if name.startswith('time/'):
      continue
    x, y = float(m1[name]), float(m8[name])
    if name.endswith('clipfrac_avg'):  # shares of tokens: one whose ratio or value sits on
      assert abs(x - y) <= 2.0 / tokens, (name, x, y)  # the clip edge may fall either way
      continue
    assert abs(x - y) <= 1e-4 * abs(x) + 1e-6, (name, x, y)
  # Start params are the same on both meshes; the update agrees.
  for x, y in zip(jax.tree.leaves(one['start']), jax.tree.leaves(eight['start'])):
    np.testing.assert_array_equal(x, y)
  _assert_updates_agree(one['start'], one['params'], eight['params'],
                        stage1.config.train.learning_rate)
  np.testing.assert_array_equal(one['extra']['rng'], eight['extra']['rng'])
  assert float(one['extra']['kl_coef']) == float(eight['extra']['kl_coef'])


# --- (d) a toy reward that PPO raises --------------------------------------------------------

def test_ppo_raises_a_toy_reward_and_the_kl_stays_finite(roles):
  """Reward = +1 per occurrence of one token in the response, replacing the reward model.
  The seam: the stage's `_score` (jitted by make_step_fn) is wrapped to note the tokens
  it is given, and `scalar_head.scores` as posttrain/ppo.py sees it returns the toy
  score for them; everything else (KL penalty, GAE, whitening, losses) is unchanged."""
  import jax.numpy as jnp
  from engine.trainer import Trainer
  from posttrain import ppo as ppo_mod
  iterations = 20
  config = _config(steps=iterations, train__batch_size=8, ppo__max_new_tokens=12,
                   ppo__epochs=2, train__learning_rate=1e-2, ppo__missing_eot_penalty=0.0,
                   ppo__repeat_penalty=0.0, checkpoint__save_every_steps=0)
  workdir = roles['root'] / 'toy'
  stage = _stage(config, workdir, roles, 1)
  # The chosen token: '.', the tiny model's most likely token (p ~ 0.006 at the start).
  ids = stage.tokenizer.encode('.')
  assert len(ids) == 1, ids
  chosen = ids[0]
  noted = {}
  score = stage._score

  def toy_score(state, frozen, prompt, length, tokens, counts, lang_ok):
    response = jnp.arange(tokens.shape[1])[None] < counts[:, None]
    noted['scores'] = jnp.sum((tokens == chosen) & response, axis=1).astype(jnp.float32)
    return score(state, frozen, prompt, length, tokens, counts, lang_ok)

  stage._score = toy_score
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(ppo_mod, 'scalar_head', types.SimpleNamespace(
        scores=lambda head, hidden, segment_ids: noted['scores'][:, None]))
    Trainer(stage, resume=False).run()
  steps = by_step(workdir)
  assert sorted(steps) == list(range(1, iterations + 1))
  rewards = np.array([steps[s]['objective/reward_model_score'] for s in sorted(steps)])
  kls = np.array([steps[s]['objective/kl'] for s in sorted(steps)])
  # With no rule terms, the score is the toy reward.
  assert all(steps[s]['objective/scores'] == steps[s]['objective/reward_model_score']
             for s in steps)
  first, last = rewards[:5].mean(), rewards[-5:].mean()
  print(f'toy reward per answer (max {config.ppo.max_new_tokens}): first 5 iterations '
        f'{first:.3f}, last 5 {last:.3f}; KL per answer {kls.round(2).tolist()}')
  assert first < 1.0, rewards
  assert last > first + 3.0 and last > 3 * first, rewards
  assert np.all(np.isfinite(kls)) and kls[0] == 0.0
  # Bounded: under 20 nats per response token (a collapsed policy against a ~uniform
  # reference is ~log(2048) ≈ 7.6 per token).
  assert kls.max() < 20 * config.ppo.max_new_tokens, kls

