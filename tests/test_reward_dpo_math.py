"""Reward model and DPO, in process and fast: the losses (Bradley–Terry, DPO sigmoid /
IPO / label smoothing) against hand computations, and the score index (padding, packing,
truncation) through a real tiny model."""
import functools
import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from data_pipeline import chat_template
from data_pipeline import preference
from model import scalar_head
from posttrain import dpo
from posttrain import reward
from tests.model_helpers import single_spec


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

def test_reward_reads_the_end_of_turn_of_a_real_row(tiny_tokenizer):
  """preference rows + pair_scores_fn on a random tiny model: the chosen's score is w·h + b
  at its end-of-turn; a truncated rejected's at seq_len - 1 (checked against every other
  position, so an off-by-one cannot pass)."""
  config = tiny.get_config()
  seq = 48
  spec = single_spec(config)
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
