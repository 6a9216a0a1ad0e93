"""`run.py ppo` end to end (tiny pretrain → tiny reward model → PPO): the metrics PPO
users know with KL exactly 0 at iteration 0, a bitwise resume after SIGKILL, the
rollout equal to `decode.generate`, a toy reward that PPO raises, 8 simulated devices
equal to 1, and bad input as one `error:` line with exit 2."""
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from tests.cli_helpers import tree_hashes as _tree_hashes
from tests.cli_helpers import REPO, fresh_workdir, run_cli

pytestmark = pytest.mark.slow
STEPS = 6
PPO = ['--config=configs/ppo_tiny.py', '--config.train.batch_size=4',
       '--config.ppo.minibatches=2', '--config.ppo.epochs=1', '--config.ppo.max_new_tokens=8',
       '--config.train.peak_tflops=1']
RUN = [*PPO, f'--config.train.steps={STEPS}', '--config.checkpoint.save_every_steps=1',
       '--config.checkpoint.keep=10']
METRICS = ('objective/scores', 'objective/kl', 'objective/entropy',
           'objective/non_score_reward', 'objective/rlhf_reward', 'policy/approxkl_avg',
           'policy/clipfrac_avg', 'loss/policy_avg', 'loss/value_avg', 'val/clipfrac_avg',
           'val/ratio', 'response_length', 'end_of_turn_rate', 'time/rollout_s',
           'time/scoring_s', 'time/training_s')
TIMING = ('tokens_per_s', 'step_time_s', 'mfu', 'model_tflops_per_device')


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _by_step(workdir):
  return {r['step']: r for r in _records(workdir) if 'objective/kl' in r}


def _deterministic(record):
  return {k: v for k, v in record.items() if not k.startswith('time/') and k not in TIMING}


def _state(workdir, step):
  import orbax.checkpoint as ocp
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))


def _one_line_error(result, fragment):
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  lines = result.stderr.strip().splitlines()
  assert lines, 'no stderr'
  assert lines[-1].startswith('error: ') and fragment in lines[-1], lines[-1]
  assert sum(l.startswith('error: ') for l in lines) == 1, lines
  assert not any('Traceback' in l for l in lines), result.stderr[-3000:]


@pytest.fixture(scope='module')
def roles(tiny_workdir, tmp_path_factory):
  """A tiny pretrain workdir (the SFT role: actor and reference) and a reward model on it."""
  root = tmp_path_factory.mktemp('ppo_stage')
  p = fresh_workdir(tiny_workdir, root / 'pretrain')
  result = run_cli('pretrain', '--config=configs/tiny.py', f'--workdir={p}',
                   '--config.train.steps=10', '--config.train.batch_size=4',
                   '--config.train.eval_every=0', '--config.checkpoint.save_every_steps=10',
                   '--config.train.peak_tflops=1')
  assert result.returncode == 0, result.stderr[-2000:]
  r = root / 'reward'
  result = run_cli('reward', '--config=configs/reward_tiny.py', f'--workdir={r}',
                   f'--init_from={p}', '--config.train.steps=4', '--config.train.batch_size=4',
                   '--config.train.eval_batches=1', '--config.train.eval_every=0',
                   '--config.train.peak_tflops=1')
  assert result.returncode == 0, result.stderr[-2000:]
  return {'p': str(p), 'r': str(r), 'root': root}


@pytest.fixture(scope='module')
def straight(roles):
  """One uninterrupted PPO run, saving every iteration."""
  workdir = roles['root'] / 'straight'
  result = run_cli('ppo', *RUN, f'--workdir={workdir}', f'--init_from={roles["p"]}',
                   f'--reward_from={roles["r"]}')
  return workdir, result


# --- (a) a run and its metrics ---------------------------------------------------------------

def test_run_exits_0_with_ppo_metrics_and_zero_kl_at_iteration_0(straight):
  workdir, result = straight
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ppo: actor full, critic from reward' in result.stdout
  assert f'ppo: iteration {STEPS} done' in result.stdout
  steps = _by_step(workdir)
  assert sorted(steps) == list(range(1, STEPS + 1))
  first = steps[1]
  missing = [name for name in METRICS if name not in first]
  assert not missing, (missing, sorted(first))
  for record in steps.values():
    for name in METRICS:
      assert math.isfinite(record[name]), (record['step'], name, record[name])
  # Iteration 0: the actor is the reference, so the sampled tokens' KL is exactly 0 and
  # so is the KL penalty; the RLHF reward is the score alone.
  assert first['objective/kl'] == 0.0
  assert first['objective/non_score_reward'] == 0.0
  assert first['objective/rlhf_reward'] == first['objective/scores']
  assert first['kl_coef'] == pytest.approx(0.05)  # base.py's default, fixed controller
  # The actor trains: the KL is no longer exactly 0 afterwards.
  assert any(steps[s]['objective/kl'] != 0.0 for s in range(2, STEPS + 1))
  for record in steps.values():
    assert 0 < record['response_length'] <= 8
    assert 0 <= record['end_of_turn_rate'] <= 1
    assert 0 <= record['policy/clipfrac_avg'] <= 1 and 0 <= record['val/clipfrac_avg'] <= 1
    assert record['policy/approxkl_avg'] >= 0 and record['loss/value_avg'] >= 0
    assert record['objective/entropy'] > 0
    for name in ('time/rollout_s', 'time/scoring_s', 'time/training_s'):
      assert record[name] > 0
  # Every iteration is a checkpoint (save_every_steps=1) holding actor, critic, both
  # optimizers' states and the sampling key + KL coefficient.
  state = _state(workdir, STEPS)
  assert sorted(state) == ['extra', 'opt_state', 'params', 'step']
  assert sorted(state['params']) == ['actor', 'critic']
  assert sorted(state['params']['critic']) == ['head', 'lm']
  assert sorted(state['extra']) == ['kl_coef', 'rng']
  assert int(state['step']) == STEPS


# --- (b) SIGKILL + resume --------------------------------------------------------------------

def test_sigkill_then_resume_is_bitwise_identical(roles, straight, tmp_path):
  a_dir, a_result = straight
  assert a_result.returncode == 0, a_result.stderr[-3000:]
  killed = tmp_path / 'killed'
  args = [*RUN, f'--workdir={killed}', f'--init_from={roles["p"]}',
          f'--reward_from={roles["r"]}']
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'run.py'), 'ppo', *args],
                          env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  try:
    while not os.path.isdir(os.path.join(killed, 'checkpoints', '1')):
      assert time.time() < deadline and proc.poll() is None
      time.sleep(0.02)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  done = sorted(int(d) for d in os.listdir(killed / 'checkpoints') if d.isdigit())
  assert STEPS not in done, done  # killed mid-run
  print(f'SIGKILL with checkpoints {done} written')
  resumed = run_cli('ppo', *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from step' in resumed.stdout
  a, b = _by_step(a_dir), _by_step(killed)  # the file holds each step once after a resume
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    da, db = _deterministic(a[step]), _deterministic(b[step])
    assert da == db, (step, {k: (da.get(k), db.get(k)) for k in set(da) | set(db)
                             if da.get(k) != db.get(k)})
  # Params, both optimizer states, the RNG key and the KL coefficient: bitwise.
  import jax
  la = jax.tree_util.tree_leaves_with_path(_state(a_dir, STEPS))
  lb = jax.tree_util.tree_leaves_with_path(_state(killed, STEPS))
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=str(path))
  with open(a_dir / 'checkpoints' / str(STEPS) / 'data' / 'process_0-of-1.json') as f:
    data_a = json.load(f)
  with open(killed / 'checkpoints' / str(STEPS) / 'data' / 'process_0-of-1.json') as f:
    data_b = json.load(f)
  assert data_a == data_b


# --- in-process stages -----------------------------------------------------------------------

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
  steps = _by_step(workdir)
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


# --- (f) bad input ---------------------------------------------------------------------------

def _other_tokenizer(directory):
  """A tokenizer of the same size as the tiny one, trained on a sample of its lines."""
  from configs import tiny
  from data_pipeline import documents, embedded
  from data_pipeline import tokenizer as tokenizer_lib
  config = tiny.get_config()
  config.tokenizer.max_sentences = 3000
  tokenizer = tokenizer_lib.train_tokenizer(
      documents.iter_documents(embedded.TRAIN_FILES, config.data), config.tokenizer)
  tokenizer_lib.save_tokenizer(tokenizer, str(directory))
  return tokenizer


def _reward_with_other_tokenizer(roles):
  """A copy of the reward workdir whose tokenizer is another one (as if trained with it)."""
  target = roles['root'] / 'reward_other_tok'
  if not target.exists():
    shutil.copytree(roles['r'], target)
    shutil.rmtree(target / 'tokenizer')
    _other_tokenizer(target / 'tokenizer')
  return str(target)


CASES = [
    ('reward_from_pretrain', lambda s: [f'--reward_from={s["p"]}'],
     'is not a reward model (its stage is pretrain); give a workdir made by `run.py reward`'),
    ('reward_from_missing', lambda s: [],
     '--reward_from is required: a workdir made by `run.py reward`'),
    ('reward_other_tokenizer', lambda s: [f'--reward_from={_reward_with_other_tokenizer(s)}'],
     '--reward_from was trained with another tokenizer than --init_from'),
    ('no_room_for_prompt', lambda s: [f'--reward_from={s["r"]}',
                                      '--config.ppo.max_new_tokens=126'],
     'ppo.max_new_tokens=126 leaves no room for a prompt in data.seq_len=128'),
    ('minibatches_not_dividing', lambda s: [f'--reward_from={s["r"]}',
                                            '--config.ppo.minibatches=3'],
     'ppo.minibatches=3 must divide train.batch_size=4'),
]


@pytest.mark.parametrize('name,flags,fragment', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(roles, tmp_path, name, flags, fragment):
  watched = [roles['p'], roles['r']]
  before = [_tree_hashes(w) for w in watched]
  workdir = tmp_path / 'ppo'
  result = run_cli('ppo', *PPO, '--config.train.steps=2', f'--workdir={workdir}',
                   f'--init_from={roles["p"]}', *flags(roles))
  _one_line_error(result, fragment)
  assert [_tree_hashes(w) for w in watched] == before
  assert not workdir.exists() or not os.listdir(workdir), os.listdir(workdir)
