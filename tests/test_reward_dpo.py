"""Reward model and DPO: losses against hand computations, the score index (padding,
packing, truncation), DPO exact at step 0, 8 devices == 1 device, SIGKILL resume,
and `eval` on a reward workdir."""
import functools
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from data_pipeline import chat_template
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
from tests.cli_helpers import REPO, fresh_workdir, run_cli

LN2 = float(np.float32(np.log(2)))
SMALL = ['--config.train.batch_size=4', '--config.train.eval_batches=1',
         '--config.train.eval_every=0', '--config.train.peak_tflops=1']


def _log1pexp(x):
  """-log σ(-x) = log(1 + e^x), in float64."""
  return np.logaddexp(0.0, np.asarray(x, np.float64))


# ----------------------------------------------------------------------------- (a) losses


def _pair_batch(valid, t=5):
  segment_ids = np.zeros((len(valid), 2, t), np.int32)
  segment_ids[np.asarray(valid, bool), :, :3] = 1
  return segment_ids


@pytest.mark.parametrize('center_coef,use_margin', [(0.0, True), (0.01, True), (0.05, False)])
def test_bradley_terry_sums_by_hand(center_coef, use_margin):
  scores = np.array([[1.5, 0.25], [-0.5, 0.75], [2.0, 2.0], [0.125, -1.0], [9.0, -9.0]],
                    np.float32)
  margin = np.array([0.5, 1.0, 0.0, 2.0, 3.0], np.float32)
  valid = [1, 1, 1, 1, 0]  # the last pair is padding: segment ids 0
  batch = {'segment_ids': _pair_batch(valid), 'margin': np.stack([margin, margin], 1)}
  objective, sums = jax.jit(functools.partial(reward.bradley_terry_sums, center_coef=center_coef,
                                              use_margin=use_margin))(scores, batch)
  c, r = scores[:4, 0].astype(np.float64), scores[:4, 1].astype(np.float64)
  m = margin[:4].astype(np.float64) if use_margin else 0.0
  loss = _log1pexp(-(c - r - m)) + center_coef * (c + r) ** 2
  want = {'loss': loss.sum(), 'accuracy': 2.0,  # pair 2 is a tie: not right
          'margin': (c - r).sum(), 'reward_mean': ((c + r) / 2).sum(),
          'reward_min': -1.0, 'reward_max': 2.0, 'count': 4.0}  # padding's ±9 excluded
  assert sorted(sums) == sorted(want)
  for key, value in want.items():
    assert abs(float(sums[key]) - value) <= 1e-6 * max(1.0, abs(value)), (key, sums[key], value)
  assert float(objective) == float(sums['loss'])
  # The gradient w.r.t. the scores: -σ(-(c - r - m)) + 2·coef·(c + r) for the chosen.
  grad = jax.grad(lambda s: reward.bradley_terry_sums(s, batch, center_coef, use_margin)[0])(
      scores)
  sig = 1.0 / (1.0 + np.exp(c - r - m))
  np.testing.assert_allclose(grad[:4, 0], -sig + 2 * center_coef * (c + r), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(grad[:4, 1], sig + 2 * center_coef * (c + r), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(grad[4], [0.0, 0.0])


POLICY = np.array([[-10.0, -12.5], [-7.25, -6.0], [-3.0, -3.5], [-40.0, -20.0]], np.float32)
REFERENCE = np.array([[-10.5, -12.0], [-7.0, -7.0], [-3.0, -3.5], [-1.0, -1.0]], np.float32)


@pytest.mark.parametrize('loss_type,beta,smoothing', [
    ('sigmoid', 0.1, 0.0), ('sigmoid', 0.5, 0.0), ('sigmoid', 0.1, 0.1),
    ('sigmoid', 2.0, 0.25), ('ipo', 0.1, 0.0), ('ipo', 0.5, 0.0)])
def test_dpo_losses_by_hand(loss_type, beta, smoothing):
  losses, rewards = jax.jit(functools.partial(
      dpo.dpo_losses, beta=beta, loss_type=loss_type, label_smoothing=smoothing))(
          POLICY, REFERENCE)
  p, ref = POLICY.astype(np.float64), REFERENCE.astype(np.float64)
  h = (p[:, 0] - ref[:, 0]) - (p[:, 1] - ref[:, 1])
  np.testing.assert_allclose(h, [1.0, -1.25, 0.0, -20.0])
  if loss_type == 'ipo':
    want = (h - 1.0 / (2.0 * beta)) ** 2
  else:  # -(1-ε)·log σ(βh) - ε·log σ(-βh)
    want = (1.0 - smoothing) * _log1pexp(-beta * h) + smoothing * _log1pexp(beta * h)
  np.testing.assert_allclose(np.asarray(losses, np.float64), want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(rewards, np.float64), beta * (p - ref), rtol=1e-6,
                             atol=1e-7)
  if loss_type == 'sigmoid':  # h = 0 (pair 2): ln 2 whatever the smoothing
    assert abs(float(losses[2]) - math.log(2)) <= 1e-6
  # dpo_sums over real pairs only: the last pair is padding.
  cfg = types.SimpleNamespace(beta=beta, loss_type=loss_type, label_smoothing=smoothing)
  batch = {'segment_ids': _pair_batch([1, 1, 1, 0])}
  total, sums = dpo.dpo_sums(POLICY, REFERENCE, batch, cfg)
  rw = beta * (p[:3] - ref[:3])
  expected = {'loss': want[:3].sum(), 'rewards/chosen': rw[:, 0].sum(),
              'rewards/rejected': rw[:, 1].sum(), 'rewards/margins': (rw[:, 0] - rw[:, 1]).sum(),
              'rewards/accuracies': 1.0, 'logps/chosen': p[:3, 0].sum(),
              'logps/rejected': p[:3, 1].sum(), 'count': 3.0}
  assert sorted(sums) == sorted(expected)
  for key, value in expected.items():
    assert abs(float(sums[key]) - value) <= 1e-6 * max(1.0, abs(value)), (key, sums[key], value)
  assert float(total) == float(sums['loss'])


# ------------------------------------------------------------------------- (b) score index


def _numbered_hidden(b, t, d=4):
  """hidden[b, t] = (100·b + t, -1, 0.5, 7): every position a distinct first value."""
  hidden = np.zeros((b, t, d), np.float32)
  hidden[..., 0] = 100 * np.arange(b)[:, None] + np.arange(t)[None, :]
  hidden[..., 1], hidden[..., 2], hidden[..., 3] = -1.0, 0.5, 7.0
  return hidden


def test_last_token_index_right_padding_and_truncation():
  t = 8
  segment_ids = np.array([[1, 1, 1, 0, 0, 0, 0, 0],   # 3 real tokens, right padded
                          [1, 1, 1, 1, 1, 1, 1, 1],   # a response truncated at seq_len
                          [1, 0, 0, 0, 0, 0, 0, 0],   # one token
                          [1, 1, 1, 1, 1, 1, 1, 0],   # ends one before the edge
                          [0, 0, 0, 0, 0, 0, 0, 0]],  # a padding row
                         np.int32)
  index = np.asarray(scalar_head.last_token_index(jnp.asarray(segment_ids), 1))
  np.testing.assert_array_equal(index[:, 0], [2, t - 1, 0, 6, -1])
  head = {'w': jnp.asarray([1.0, 0.0, 0.0, 0.0]), 'b': jnp.asarray(0.25)}
  got = np.asarray(scalar_head.scores(head, _numbered_hidden(5, t), jnp.asarray(segment_ids)))
  np.testing.assert_array_equal(got[:, 0], [2.25, 107.25, 200.25, 306.25, 0.0])
  # The whole vector is read at that position: w·h + b with a dense w.
  w = np.array([0.5, 2.0, -4.0, 0.125], np.float32)
  got = np.asarray(scalar_head.scores({'w': jnp.asarray(w), 'b': jnp.asarray(-1.0)},
                                      _numbered_hidden(5, t), jnp.asarray(segment_ids)))
  hidden = _numbered_hidden(5, t)
  want = [hidden[0, 2] @ w - 1, hidden[1, 7] @ w - 1, hidden[2, 0] @ w - 1, hidden[3, 6] @ w - 1,
          0.0]
  np.testing.assert_allclose(got[:, 0], want, rtol=1e-6)


def test_last_token_index_packed_rows():
  segment_ids = np.array([[1, 1, 2, 2, 2, 3, 0, 0],
                          [1, 1, 1, 1, 1, 2, 2, 2],   # the last segment runs to the edge
                          [1, 1, 1, 1, 0, 0, 0, 0]],  # segments 2 and 3 absent
                         np.int32)
  index = np.asarray(scalar_head.last_token_index(jnp.asarray(segment_ids), 3))
  np.testing.assert_array_equal(index, [[1, 4, 5], [4, 7, -1], [3, -1, -1]])
  head = {'w': jnp.asarray([1.0, 0.0, 0.0, 0.0]), 'b': jnp.asarray(0.5)}
  got = np.asarray(scalar_head.scores(head, _numbered_hidden(3, 8), jnp.asarray(segment_ids), 3))
  np.testing.assert_array_equal(got, [[1.5, 4.5, 5.5], [104.5, 107.5, 0.0], [203.5, 0.0, 0.0]])


def _single_spec(config):
  return train_state.ModelSpec(config.model, mesh_lib.make_mesh(config.mesh, jax.devices()[:1]))


def test_reward_reads_the_end_of_turn_of_a_real_row(tiny_tokenizer):
  """preference rows + pair_scores_fn on a random tiny model: the chosen's score is w·h + b
  at its end-of-turn; a truncated rejected's at seq_len - 1 (checked against every other
  position, so an off-by-one cannot pass)."""
  config = tiny.get_config()
  seq = 48
  spec = _single_spec(config)
  params = jax.device_get(jax.jit(spec.init_params)(jax.random.key(3)))
  rng = np.random.default_rng(0)
  head = {'w': rng.standard_normal(config.model.d_model).astype(np.float32),
          'b': np.float32(0.375)}
  question = 'Name a colour of the sky.'
  long_answer = ' '.join(['The sky is blue on a clear day and grey when it rains.'] * 8)
  pair = preference.to_pair({'prompt': question, 'chosen': 'Blue.', 'rejected': long_answer},
                            'x:1')
  examples, stats = preference.tokenize_pairs([pair], tiny_tokenizer, seq)
  assert stats['truncated'] == 1
  batch = preference.eval_batches(examples, 1)[0]
  got = np.asarray(jax.jit(reward.pair_scores_fn(spec, lambda lm, _: lm))(
      {'lm': params, 'head': head}, {}, batch))
  assert got.shape == (1, 2)
  eot = tiny_tokenizer.chat_ids['<|end_of_turn|>']
  for row, response in enumerate(('Blue.', long_answer)):
    ids, _ = chat_template.encode(tiny_tokenizer, [{'role': 'user', 'content': question},
                                                   {'role': 'assistant', 'content': response}])
    inputs = ids[:seq]
    n = len(inputs)
    hidden = np.asarray(jax.jit(spec.hidden_states)(
        params, inputs[None], np.arange(n, dtype=np.int32)[None], np.ones((1, n), np.int32)),
        np.float64)[0]
    values = hidden @ head['w'].astype(np.float64) + float(head['b'])
    end = n - 1
    if row == 0:
      assert n == len(ids) < seq and inputs[end] == eot  # the end-of-turn of the response
    else:
      assert len(ids) > seq and end == seq - 1 and inputs[end] != eot  # truncated
    assert abs(got[0, row] - values[end]) <= 1e-4 * max(1.0, abs(values[end])), (
        row, got[0, row], values[end])
    others = np.delete(values, end)
    assert np.abs(others - got[0, row]).min() > 1e-3, 'the score also matches another position'


def test_reward_pairs_score_a_response_token(tiny_tokenizer, tmp_path):
  """Every pair the reward stage keeps has a response token at its score index."""
  question = 'What is the capital of France?'
  prompt_len = len(chat_template.encode(tiny_tokenizer, [{'role': 'user',
                                                          'content': question}])[0])
  path = tmp_path / 'pairs.jsonl'
  path.write_text(json.dumps({'prompt': question, 'chosen': 'Paris.', 'rejected': 'Rome.'}) +
                  '\n' + json.dumps({'prompt': 'Hi', 'chosen': 'Hello.', 'rejected': 'Go.'}) +
                  '\n')
  config = tiny.get_config()
  config.data.seq_len = prompt_len + 1
  examples, _ = preference.load_pairs(config, tiny_tokenizer, (str(path),), None, 'the pairs')
  assistant = tiny_tokenizer.chat_ids['<|assistant|>']
  for e in examples:
    index = np.asarray(scalar_head.last_token_index(jnp.asarray(e['segment_ids']), 1))[:, 0]
    scored = e['inputs'][np.arange(2), index]
    assert assistant not in scored.tolist(), 'the score is read at the <|assistant|> marker'
    assert not np.array_equal(e['inputs'][0], e['inputs'][1])


# -------------------------------------------------------------------- workdirs (subprocess)


@pytest.fixture(scope='module')
def pretrained(tiny_workdir, tmp_path_factory):
  p = fresh_workdir(tiny_workdir, tmp_path_factory.mktemp('reward_dpo') / 'pretrain')
  result = run_cli('pretrain', '--config=configs/tiny.py', f'--workdir={p}',
                   '--config.train.steps=10', '--config.train.batch_size=4',
                   '--config.train.eval_every=0', '--config.checkpoint.save_every_steps=10',
                   '--config.train.peak_tflops=1')
  assert result.returncode == 0, result.stderr[-2000:]
  return p


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _by_step(workdir, key):
  return {r['step']: r for r in _records(workdir) if key in r}


def _state(workdir, step):
  import orbax.checkpoint as ocp
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'state'))


def _tree_hashes(root):
  out = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.mark.slow
def test_dpo_step_zero_is_exactly_ln2_full_and_lora(pretrained, tmp_path):
  before = _tree_hashes(pretrained)
  first = {}
  for method in ('full', 'lora'):
    workdir = tmp_path / method
    result = run_cli('dpo', '--config=configs/dpo_tiny.py', *SMALL, f'--workdir={workdir}',
                     f'--init_from={pretrained}', f'--config.dpo.method={method}',
                     '--config.train.steps=2', '--config.train.log_every=1',
                     '--config.data.seq_len=64')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'dpo: {method}, sigmoid loss, beta 0.1' in result.stdout
    train = _by_step(workdir, 'loss')
    assert sorted(train) == [1, 2]
    step1 = train[1]
    assert step1['lr'] == 0.0  # warmup: the first update changes nothing
    for step in (1, 2):  # policy == reference, in float32, bitwise
      record = train[step]
      assert record['loss'] == LN2, (method, step, record['loss'])
      for key in ('rewards/chosen', 'rewards/rejected', 'rewards/margins',
                  'rewards/accuracies'):
        assert record[key] == 0.0, (method, step, key, record[key])
      assert record['logps/chosen'] < 0 and record['logps/rejected'] < 0
      assert record['grad_norm'] > 0
    # The implicit reward at the step-0 evaluation is 0 too (ties count as wrong).
    evals = _by_step(workdir, 'eval_accuracy')
    assert evals[0]['eval_margin'] == 0.0 and evals[0]['eval_accuracy'] == 0.0
    first[method] = step1
  # Full and LoRA start from the same model on the same data.
  assert first['full']['logps/chosen'] == first['lora']['logps/chosen']
  assert first['full']['logps/rejected'] == first['lora']['logps/rejected']
  assert _tree_hashes(pretrained) == before  # the reference/base is never written


@pytest.fixture(scope='module')
def reward_run(pretrained, tmp_path_factory):
  """A reward run straight through (also the workdir `eval` reads)."""
  root = tmp_path_factory.mktemp('reward_runs')
  args = ['--config=configs/reward_tiny.py', *SMALL, f'--init_from={pretrained}',
          '--config.data.seq_len=128', '--config.train.steps=40', '--config.train.log_every=1',
          '--config.checkpoint.save_every_steps=10', '--config.checkpoint.keep=10']
  straight = root / 'straight'
  result = run_cli('reward', *args, f'--workdir={straight}')
  assert result.returncode == 0, result.stderr[-3000:]
  return {'args': args, 'straight': straight, 'root': root, 'stdout': result.stdout}


@pytest.mark.slow
def test_reward_sigkill_then_resume_is_bitwise_identical(reward_run):
  args, straight = reward_run['args'], reward_run['straight']
  assert 'reward: full; ' in reward_run['stdout']
  killed = reward_run['root'] / 'killed'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'run.py'), 'reward', *args,
                           f'--workdir={killed}'], env=env, cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(killed, 'checkpoints', '10')):
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = sorted(int(d) for d in os.listdir(killed / 'checkpoints') if d.isdigit())
  assert 40 not in done, done  # killed mid-run
  resumed = run_cli('reward', *args, f'--workdir={killed}')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from step' in resumed.stdout
  a, b = _by_step(straight, 'loss'), _by_step(killed, 'loss')  # later lines win
  assert sorted(a) == list(range(1, 41))
  for key in ('loss', 'accuracy', 'margin', 'reward_min', 'reward_max', 'reward_mean'):
    assert [a[s][key] for s in range(1, 41)] == [b[s][key] for s in range(1, 41)], key
  assert a[1]['loss'] == LN2  # the zero-initialised head scores every response 0 at step 0
  assert a[1]['margin'] == 0.0 and a[1]['accuracy'] == 0.0
  assert len({a[s]['loss'] for s in range(2, 41)}) > 30  # and then it trains
  sa, sb = _state(straight, 40), _state(killed, 40)
  la, lb = (jax.tree_util.tree_leaves_with_path(s) for s in (sa, sb))
  assert [p for p, _ in la] == [p for p, _ in lb]
  assert sorted(sa['params']) == ['head', 'lm']
  assert np.abs(sa['params']['head']['w']).max() > 0  # the zero-initialised head trained
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=str(path))
  ea, eb = _by_step(straight, 'eval_accuracy'), _by_step(killed, 'eval_accuracy')
  assert ea[40] == eb[40]


PAIRS = [
    {'prompt': 'What is the capital of France?', 'chosen': 'Paris.',
     'rejected': 'Paris. Paris. Paris.', 'kind': 'repeat'},
    {'prompt': 'Translate to English: 你好', 'chosen': 'Hello.', 'rejected': '你好。',
     'kind': 'wrong_lang'},
    {'prompt': 'Who wrote Hamlet?', 'chosen': 'William Shakespeare.', 'rejected': 'William',
     'kind': 'truncate'},
    {'prompt': [{'role': 'system', 'content': 'Be brief.'},
                {'role': 'user', 'content': 'What colour is grass?'}],
     'chosen': [{'role': 'assistant', 'content': 'Green.'}],
     'rejected': [{'role': 'assistant', 'content': 'Paris.'}], 'kind': 'mismatch'},
    {'chosen': [{'role': 'user', 'content': 'How many legs has a spider?'},
                {'role': 'assistant', 'content': 'Eight.'}],
     'rejected': [{'role': 'user', 'content': 'How many legs has a spider?'},
                  {'role': 'assistant', 'content': 'Eight. Eight. Eight.'}], 'kind': 'repeat'},
    {'prompt': 'Name a prime number.', 'chosen': 'Seven.', 'rejected': 'Shakespeare.',
     'kind': 'mismatch'},
]


def _as_messages(value, role):
  return value if isinstance(value, list) else [{'role': role, 'content': value}]


@pytest.mark.slow
def test_eval_on_reward_workdir_matches_recomputed_scores(reward_run, tmp_path):
  workdir = reward_run['straight']
  pairs_file = tmp_path / 'pairs.jsonl'
  pairs_file.write_text(''.join(json.dumps(p, ensure_ascii=False) + '\n' for p in PAIRS))
  conversations = []  # (prompt messages, response messages) per score line
  lines = []
  for p in PAIRS:
    pair = preference.to_pair(p, 'x')
    for side in ('chosen', 'rejected'):
      conversations.append((pair['prompt'], pair[side]))
      lines.append({'prompt': pair['prompt'], 'response': pair[side]})
  lines.append({'messages': conversations[0][0] + conversations[0][1]})  # the same as line 1
  lines.append({'prompt': 'What is the capital of France?', 'response': 'Paris.'})  # strings
  score_file = tmp_path / 'scores.jsonl'
  score_file.write_text(''.join(json.dumps(x, ensure_ascii=False) + '\n' for x in lines))
  result = run_cli('eval', f'--workdir={workdir}', '--json', f'--eval_files={pairs_file}',
                   f'--score_file={score_file}')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads([l for l in result.stdout.splitlines() if l.startswith('{')][-1])
  assert summary['stage'] == 'reward' and summary['step'] == 40
  assert summary['pairs'] == len(PAIRS)
  scores = np.asarray(summary['scores'])
  assert len(scores) == len(lines)
  assert scores[-2] == scores[0] and scores[-1] == scores[0]  # three spellings, one score
  chosen, rejected = scores[0:12:2], scores[1:12:2]
  assert np.abs(chosen - rejected).min() > 1e-6  # no ties within float noise: stable comparisons
  right = chosen > rejected
  kinds = [p['kind'] for p in PAIRS]
  assert summary['accuracy'] == pytest.approx(right.mean(), abs=1e-12)
  assert summary['accuracy_by_kind'] == pytest.approx(
      {k: right[[x == k for x in kinds]].mean() for k in sorted(set(kinds))}, abs=1e-12)
  assert sorted(summary['accuracy_by_kind']) == ['mismatch', 'repeat', 'truncate', 'wrong_lang']
  assert summary['margin'] == pytest.approx((chosen - rejected).mean(), abs=1e-5)
  both = np.concatenate([chosen, rejected])
  assert summary['reward_mean'] == pytest.approx(both.mean(), abs=1e-5)
  # Independently, from the saved params: w·h + b at each conversation's last token.
  params = _state(workdir, 40)['params']
  config = tiny.get_config()
  spec = _single_spec(config)
  from data_pipeline import tokenizer as tokenizer_lib
  tokenizer = tokenizer_lib.load_tokenizer(os.path.join(workdir, 'tokenizer', 'tokenizer.model'))
  hidden_fn = jax.jit(spec.hidden_states)
  for i, (prompt, response) in enumerate(conversations):
    ids, _ = chat_template.encode(tokenizer, prompt + response)
    assert len(ids) < 128 and ids[-1] == tokenizer.chat_ids['<|end_of_turn|>']
    n = len(ids)
    hidden = np.asarray(hidden_fn(params['lm'], ids[None], np.arange(n, dtype=np.int32)[None],
                                  np.ones((1, n), np.int32)), np.float64)[0, n - 1]
    want = hidden @ np.asarray(params['head']['w'], np.float64) + float(params['head']['b'])
    assert abs(scores[i] - want) <= 1e-4 * max(1.0, abs(want)), (i, scores[i], want)


# --------------------------------------------------------------- (d) 8 devices == 1 device


def _mesh_config(**mesh):
  config = tiny.get_config()
  config.train.batch_size = 8
  config.data.seq_len = 64
  config.train.warmup_steps = 0
  config.sft.lora_rank = 4
  for axis, size in {'data': 1, 'fsdp': 1, 'tensor': 1, **mesh}.items():
    config.mesh[axis] = size
  return config


@pytest.fixture(scope='module')
def mesh_inputs(tiny_tokenizer):
  config = _mesh_config()
  spec = _single_spec(config)
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
  grads, _ = train_step.with_mesh(mesh, jax.jit(lambda p, f, b: train_step.accumulate(
      loss_sums, p, f, b, 1, mesh)))(state['params'], frozen, batch)
  step = train_step.make_step(loss_sums, tx, schedule, shardings, mesh, 1, frozen_shardings)
  new_state, metrics = step(state, frozen, batch)
  assert int(new_state['step']) == 1
  return jax.device_get(new_state['params']), jax.device_get(metrics), jax.device_get(grads)


def _assert_trees_close(a, b, rtol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    scale = np.abs(x).max()
    if scale == 0:  # a leaf the loss does not read (the reward model's lm_head)
      assert not np.any(y), path
      continue
    assert np.abs(x - y).max() <= rtol * scale, (path, np.abs(x - y).max(), scale)


def _assert_updates_agree(a, b, lr):
  """Adam's first step is ~lr·sign(g): a gradient within float noise of 0 may flip."""
  diffs = np.concatenate([np.abs(x - y).ravel() for x, y in zip(jax.tree.leaves(a),
                                                                jax.tree.leaves(b))])
  assert np.mean(diffs <= 1e-3 * lr) >= 0.999
  assert diffs.max() <= 2 * lr


def _compare(run, config_kw):
  one, eight = _mesh_config(), _mesh_config(**config_kw)
  p1, m1, g1 = run(one, jax.devices()[:1])
  p8, m8, g8 = run(eight, jax.devices())
  assert sorted(m1) == sorted(m8)
  for key in m1:
    scale = max(abs(float(m1[key])), 1e-3)
    assert abs(float(m1[key]) - float(m8[key])) <= 1e-5 * scale, (key, m1[key], m8[key])
  _assert_trees_close(g1, g8, rtol=1e-5)
  _assert_updates_agree(p1, p8, one.train.learning_rate)
  return m1, p1


def test_sharded_reward_step_equals_single_device(mesh_inputs):
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
  metrics, params = _compare(run, {'data': 2, 'fsdp': 2, 'tensor': 2})
  assert metrics['tokens'] == 8  # pairs
  assert 0 < metrics['loss'] and np.isfinite(metrics['loss'])
  assert metrics['reward_min'] < metrics['reward_mean'] < metrics['reward_max']
  assert np.abs(params['head']['w'] - head['w']).max() > 0


def test_sharded_dpo_step_equals_single_device(mesh_inputs, method='lora'):
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
  metrics, _ = _compare(run, {'data': 2, 'fsdp': 2, 'tensor': 2})
  assert metrics['tokens'] == 8
  assert metrics['rewards/margins'] != 0.0 and abs(metrics['loss'] - LN2) > 1e-4
  assert metrics['logps/chosen'] < 0
