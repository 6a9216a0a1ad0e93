"""PPO's arithmetic (posttrain/ppo_loss.py) against plain NumPy and hand-computed
values, and where the reward lands in a prompt + response row (posttrain/ppo.py's
`build_sequences`): for answers that stop at end-of-turn and ones cut at
`max_new_tokens`, the number of non-zero advantages is the number of response tokens."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from posttrain import ppo_loss
from posttrain.ppo import build_sequences


def _spans(starts_lengths, t):
  """(B, T) float mask of one contiguous span [start, start + length) per row."""
  mask = np.zeros((len(starts_lengths), t), np.float32)
  for row, (start, length) in enumerate(starts_lengths):
    mask[row, start:start + length] = 1.0
  return mask


def _numpy_gae(rewards, values, mask, gamma, lam):
  """The textbook reverse loop, one row and one response span at a time."""
  adv = np.zeros_like(rewards, dtype=np.float64)
  for row in range(rewards.shape[0]):
    where = np.flatnonzero(mask[row])
    if not len(where):
      continue
    start, end = where[0], where[-1] + 1
    last = 0.0
    for t in reversed(range(start, end)):
      next_value = values[row, t + 1] if t + 1 < end else 0.0
      delta = rewards[row, t] + gamma * next_value - values[row, t]
      last = delta + gamma * lam * last
      adv[row, t] = last
  returns = (adv + values) * mask
  return adv, returns


# --- GAE -------------------------------------------------------------------------------------

@pytest.mark.parametrize('gamma,lam', [(0.9, 0.8), (1.0, 0.95), (0.99, 0.5)])
def test_gae_equals_numpy_reverse_loop(gamma, lam):
  rng = np.random.default_rng(0)
  t = 16
  # Spans with different starts and lengths: mid-row, one reaching the last position,
  # one token, the whole row, and an empty row.
  mask = _spans([(3, 7), (9, 7), (0, 1), (5, 1), (0, 16), (0, 0), (12, 3)], t)
  b = mask.shape[0]
  # Rewards and values are random everywhere, also off the mask: only the span may count.
  rewards = rng.normal(size=(b, t)).astype(np.float32)
  values = rng.normal(size=(b, t)).astype(np.float32)
  want_adv, want_ret = _numpy_gae(rewards.astype(np.float64), values.astype(np.float64),
                                  mask, gamma, lam)
  adv, ret = ppo_loss.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                          gamma, lam)
  adv, ret = np.asarray(adv), np.asarray(ret)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
  # returns = advantages + values on the mask, exactly 0 off it (and so are advantages).
  np.testing.assert_allclose(ret[mask > 0], (adv + values)[mask > 0], rtol=1e-6, atol=1e-6)
  assert np.all(ret[mask == 0] == 0.0) and np.all(adv[mask == 0] == 0.0)
  assert np.count_nonzero(adv) == int(mask.sum())


def test_gae_single_token_and_gamma_one_lambda_one_is_reward_to_go():
  rewards = np.array([[0.0, 1.0, 2.0, 3.0, 9.0]], np.float32)
  values = np.array([[5.0, 0.5, 0.25, 1.0, 7.0]], np.float32)
  mask = _spans([(1, 3)], 5)
  adv, ret = ppo_loss.gae(rewards, values, mask, 1.0, 1.0)
  # γ = λ = 1: return = sum of the span's rewards from t on; advantage = that − V_t.
  np.testing.assert_allclose(np.asarray(ret), [[0.0, 6.0, 5.0, 3.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(np.asarray(adv), [[0.0, 5.5, 4.75, 2.0, 0.0]], atol=1e-6)


# --- KL estimators ---------------------------------------------------------------------------

def test_kl_estimators_equal_hand_values():
  logp = np.array([-1.0, -2.0, -0.5, -3.0], np.float32)
  ref = np.array([-2.0, -1.0, -0.5, -3.5], np.float32)
  k1 = np.asarray(ppo_loss.kl_estimate(logp, ref, 'k1'))
  np.testing.assert_allclose(k1, [1.0, -1.0, 0.0, 0.5], atol=1e-7)
  k3 = np.asarray(ppo_loss.kl_estimate(logp, ref, 'k3'))
  # k3 = (r − 1) − log r, r = ref/π: log r = −1, 1, 0, −0.5.
  want = [math.exp(-1) - 1 + 1, math.e - 1 - 1, 0.0, math.exp(-0.5) - 1 + 0.5]
  np.testing.assert_allclose(k3, want, rtol=1e-6, atol=1e-7)
  assert np.all(k3 >= 0)
  # k3 is non-negative for any pair, k1 has either sign; both 0 where π = ref.
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=1000).astype(np.float32) - 2, rng.normal(size=1000).astype(np.float32) - 2
  assert np.all(np.asarray(ppo_loss.kl_estimate(a, b, 'k3')) >= 0)
  assert np.asarray(ppo_loss.kl_estimate(a, a, 'k3')).max() == 0.0
  assert np.asarray(ppo_loss.kl_estimate(a, a, 'k1')).max() == 0.0
  # Unknown names fall back to k1 (the default).
  np.testing.assert_array_equal(np.asarray(ppo_loss.kl_estimate(logp, ref, 'other')), k1)


# --- clipped losses --------------------------------------------------------------------------

def test_policy_loss_equals_hand_computed_clipped_surrogate():
  clip = 0.2
  ratios = np.array([[1.5, 0.5, 1.1, 0.7, 2.0], [0.6, 1.3, 1.0, 1.25, 0.9]], np.float64)
  adv = np.array([[1.0, -1.0, 2.0, 1.0, 5.0], [-2.0, 1.0, 1.0, -1.0, 3.0]], np.float64)
  mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], np.float32)
  old_logp = np.array([[-1.0, -2.0, -0.5, -3.0, -1.0], [-0.1, -4.0, -2.0, -1.0, -2.0]])
  logp = old_logp + np.log(ratios)
  # Per token: max(−A·ρ, −A·clip(ρ, 0.8, 1.2)).
  #   row 0: ρ 1.5 A 1  → max(−1.5, −1.2) = −1.2 (clipped: no gain past 1 + ε)
  #          ρ 0.5 A −1 → max(0.5, 0.8) = 0.8    (clipped: pessimistic on the other side)
  #          ρ 1.1 A 2  → max(−2.2, −2.2) = −2.2 (inside the range)
  #          ρ 0.7 A 1  → max(−0.7, −0.8) = −0.7 (unclipped: the lower ratio is worse)
  #          (masked out: ρ 2, A 5)
  #   row 1: ρ 0.6 A −2 → max(1.2, 1.6) = 1.6    (clipped)
  #          ρ 1.3 A 1  → max(−1.3, −1.2) = −1.2 (clipped)
  #          ρ 1   A 1  → −1
  #          ρ 1.25 A −1 → max(1.25, 1.2) = 1.25 (unclipped: the higher ratio is worse)
  #          ρ 0.9 A 3  → −2.7
  per_token = [-1.2, 0.8, -2.2, -0.7, 1.6, -1.2, -1.0, 1.25, -2.7]
  clipped = [1, 1, 0, 0, 1, 1, 0, 0, 0]
  loss, clipfrac, approxkl, ratio_mean = ppo_loss.policy_loss(
      jnp.asarray(logp, jnp.float32), jnp.asarray(old_logp, jnp.float32),
      jnp.asarray(adv, jnp.float32), jnp.asarray(mask), clip)
  np.testing.assert_allclose(float(loss), np.mean(per_token), rtol=1e-5)
  np.testing.assert_allclose(float(clipfrac), np.mean(clipped), rtol=1e-6)
  on = mask > 0
  log_ratio = np.log(ratios)[on]
  np.testing.assert_allclose(float(approxkl), 0.5 * np.mean(np.square(log_ratio)), rtol=1e-5)
  np.testing.assert_allclose(float(ratio_mean), np.mean(ratios[on]), rtol=1e-5)
  # At ratio 1 (the first minibatch of an iteration): loss = −mean A, nothing clipped, KL 0.
  loss, clipfrac, approxkl, ratio_mean = ppo_loss.policy_loss(
      jnp.asarray(old_logp, jnp.float32), jnp.asarray(old_logp, jnp.float32),
      jnp.asarray(adv, jnp.float32), jnp.asarray(mask), clip)
  np.testing.assert_allclose(float(loss), -np.mean(adv[on]), rtol=1e-6)
  assert float(clipfrac) == 0.0 and float(approxkl) == 0.0 and float(ratio_mean) == 1.0


def test_value_loss_equals_hand_computed_clipped_value():
  clip = 0.2
  old = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 2.0, -1.0, 5.0]], np.float32)
  new = np.array([[1.5, 0.5, 1.1, 0.0], [0.3, 1.0, -1.1, 9.0]], np.float32)
  returns = np.array([[2.0, 0.0, 1.0, 3.0], [1.0, 3.0, 0.0, 0.0]], np.float32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
  # clip(V, V_old ± 0.2); per token max((V − R)², (V_clip − R)²):
  #   row 0: V 1.5 → 1.2, R 2: max(0.25, 0.64) = 0.64 (clipped: moving toward R is capped)
  #          V 0.5 → 0.8, R 0: max(0.25, 0.64) = 0.64 (clipped, the downward side)
  #          V 1.1 (inside), R 1: 0.01
  #          V 0, R 3: 9
  #   row 1: V 0.3 → 0.2, R 1: max(0.49, 0.64) = 0.64 (clipped)
  #          V 1.0 → 1.8, R 3: max(4, 1.44) = 4       (unclipped: the clipped value is closer)
  #          V −1.1 (inside), R 0: 1.21
  #          (masked out: V 9)
  per_token = [0.64, 0.64, 0.01, 9.0, 0.64, 4.0, 1.21]
  clipped = [1, 1, 0, 0, 1, 0, 0]
  loss, clipfrac = ppo_loss.value_loss(new, old, returns, mask, clip)
  np.testing.assert_allclose(float(loss), 0.5 * np.mean(per_token), rtol=1e-5)
  np.testing.assert_allclose(float(clipfrac), np.mean(clipped), rtol=1e-6)


def test_entropy_of_uniform_and_one_hot():
  logits = np.zeros((1, 3, 8), np.float32)
  logits[0, 1] = [100.0] + [0.0] * 7  # nearly one-hot: entropy ~0
  mask = np.array([[1, 1, 0]], np.float32)
  got = float(ppo_loss.entropy(logits, mask))
  np.testing.assert_allclose(got, 0.5 * math.log(8), rtol=1e-5)


# --- rewards, whitening, the KL controller ---------------------------------------------------

def test_token_rewards_put_the_score_at_last_index_and_kl_penalty_on_the_mask():
  mask = _spans([(2, 3), (0, 6), (4, 1)], 6)
  kl = np.arange(18, dtype=np.float32).reshape(3, 6) / 10 + 0.05
  kl = kl * mask  # as _score passes it
  scores = np.array([1.5, -2.0, 0.25], np.float32)
  last_index = np.array([4, 5, 4], np.int32)
  coef = 0.1
  rewards, non_score = ppo_loss.token_rewards(jnp.asarray(scores), jnp.asarray(kl),
                                              jnp.asarray(mask), coef, jnp.asarray(last_index))
  rewards, non_score = np.asarray(rewards), np.asarray(non_score)
  np.testing.assert_allclose(non_score, -coef * kl * mask, rtol=1e-6)
  assert np.all(non_score[mask == 0] == 0.0)
  want = -coef * kl * mask
  want[np.arange(3), last_index] += scores
  np.testing.assert_allclose(rewards, want, rtol=1e-6, atol=1e-7)
  # The score appears once per row, at last_index and nowhere else.
  np.testing.assert_allclose(rewards - non_score, np.eye(6)[last_index] * scores[:, None],
                             atol=1e-6)


@pytest.mark.parametrize('shift_mean', [True, False])
def test_masked_whiten_is_mean_0_std_1_on_the_mask(shift_mean):
  rng = np.random.default_rng(2)
  x = (rng.normal(size=(4, 12)) * 3 + 7).astype(np.float32)
  mask = _spans([(1, 5), (0, 12), (6, 3), (11, 1)], 12)
  x[mask == 0] = 1000.0  # off-mask values must not count
  white = np.asarray(ppo_loss.masked_whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean))
  on = white[mask > 0]
  mean = x[mask > 0].mean()
  if shift_mean:
    np.testing.assert_allclose(on.mean(), 0.0, atol=1e-5)
  else:  # TRL's whiten(shift_mean=False): the mean is kept
    np.testing.assert_allclose(on.mean(), mean, rtol=1e-5)
  np.testing.assert_allclose(on.std(), 1.0, rtol=1e-4)
  assert np.all(white[mask == 0] == 0.0)
  want = (x[mask > 0] - mean) / x[mask > 0].std() + (0 if shift_mean else mean)
  np.testing.assert_allclose(on, want, rtol=1e-4, atol=1e-4)


def test_adaptive_kl_moves_the_coefficient_as_ziegler_et_al():
  target, horizon, batch = 6.0, 10000, 512
  def step(coef, kl):
    return float(ppo_loss.adaptive_kl(jnp.float32(coef), jnp.float32(kl), target, horizon,
                                      batch))
  n = batch / horizon
  # error = clip(KL/target − 1, ±0.2); coef ·= 1 + error·n
  np.testing.assert_allclose(step(0.1, 6.0), 0.1, rtol=1e-6)  # on target: unchanged
  np.testing.assert_allclose(step(0.1, 6.6), 0.1 * (1 + 0.1 * n), rtol=1e-6)
  np.testing.assert_allclose(step(0.1, 5.4), 0.1 * (1 - 0.1 * n), rtol=1e-6)
  np.testing.assert_allclose(step(0.1, 60.0), 0.1 * (1 + 0.2 * n), rtol=1e-6)  # clipped +0.2
  np.testing.assert_allclose(step(0.1, 0.0), 0.1 * (1 - 0.2 * n), rtol=1e-6)  # clipped −0.2
  np.testing.assert_allclose(step(0.1, -3.0), 0.1 * (1 - 0.2 * n), rtol=1e-6)  # k1 can be < 0
  assert step(0.1, 7.0) > 0.1 > step(0.1, 5.0)


# --- the repeated-4-gram rule ----------------------------------------------------------------

def test_repeated_ngram_cases():
  tokens = np.array([
      [1, 2, 3, 4, 1, 2, 3, 4, 0, 0],    # a repeat inside the response
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],   # none
      [1, 2, 3, 4, 9, 1, 2, 3, 4, 0],    # the second copy ends past the response
      [5, 5, 5, 5, 5, 0, 0, 0, 0, 0],    # overlapping copies
      [7, 8, 9, 1, 7, 8, 9, 2, 7, 8],    # only 3-grams repeat
      [3, 3, 3, 3, 0, 0, 0, 0, 0, 0],    # one 4-gram, no second one
  ], np.int32)
  counts = np.array([8, 10, 8, 5, 10, 4])
  mask = np.arange(10)[None] < counts[:, None]
  got = np.asarray(ppo_loss.repeated_ngram(jnp.asarray(tokens), jnp.asarray(mask)))
  assert got.tolist() == [True, False, False, True, False, False]
  full = np.ones_like(mask)
  got = np.asarray(ppo_loss.repeated_ngram(jnp.asarray(tokens), jnp.asarray(full)))
  assert got.tolist() == [True, False, True, True, False, True]  # the zero padding repeats
  # Too short for two 4-grams.
  short = np.asarray(ppo_loss.repeated_ngram(jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4), bool)))
  assert short.tolist() == [False, False]


# --- where the reward lands -----------------------------------------------------------------

EOT = 3


def _rollout_like_generate():
  """Prompts of different lengths (right-padded to P) and responses as decode.generate
  returns them: tokens after the end-of-turn are 0, counts include the end-of-turn."""
  p = 8  # max_new_tokens = 6
  lengths = np.array([3, 7, 5, 8], np.int32)
  prompt = np.zeros((4, p), np.int32)
  for row, length in enumerate(lengths):
    prompt[row, :length] = 100 + 10 * row + np.arange(length)
  tokens = np.array([
      [11, 12, EOT, 0, 0, 0],      # stops at end-of-turn after 3 tokens
      [21, 22, 23, 24, 25, 26],    # cut at max_new_tokens
      [EOT, 0, 0, 0, 0, 0],        # end-of-turn at once
      [41, 42, 43, 44, 45, EOT],   # end-of-turn as the last allowed token
  ], np.int32)
  counts = np.array([3, 6, 1, 6], np.int32)
  return prompt, lengths, tokens, counts


def test_build_sequences_places_prompt_and_response_and_masks_the_response_targets():
  prompt, lengths, tokens, counts = _rollout_like_generate()
  seq, segment_ids, mask = (np.asarray(x) for x in build_sequences(
      jnp.asarray(prompt), jnp.asarray(lengths), jnp.asarray(tokens), jnp.asarray(counts)))
  b, p = prompt.shape
  n = tokens.shape[1]
  assert seq.shape == (b, p + n) and segment_ids.shape == (b, p + n)
  assert mask.shape == (b, p + n - 1)
  for row in range(b):
    length, count = lengths[row], counts[row]
    # The sequence: the prompt, then the response's counted tokens, then zeros.
    want = np.zeros(p + n, np.int32)
    want[:length] = prompt[row, :length]
    want[length:length + count] = tokens[row, :count]
    np.testing.assert_array_equal(seq[row], want)
    np.testing.assert_array_equal(segment_ids[row], np.arange(p + n) < length + count)
    # Exactly counts[b] response targets: length − 1 … length + count − 2.
    assert mask[row].sum() == count
    np.testing.assert_array_equal(np.flatnonzero(mask[row]),
                                  np.arange(length - 1, length + count - 1))
    # Target index t predicts seq[t + 1], which is the response's token t + 1 − length.
    for t in np.flatnonzero(mask[row]):
      assert seq[row, t + 1] == tokens[row, t + 1 - length]
    # last_index (as _score computes it) is the target of the last response token.
    last_index = length + count - 2
    assert mask[row, last_index] == 1 and (last_index + 1 == mask.shape[1]
                                           or mask[row, last_index + 1] == 0)
    assert seq[row, last_index + 1] == tokens[row, count - 1]
  # The row that stopped at end-of-turn ends on it; the cut row on its last sampled token.
  assert seq[0, lengths[0] + counts[0] - 1] == EOT
  assert seq[1, lengths[1] + counts[1] - 1] == 26
  # The full-length prompt + full-length response fills the row to its last target.
  assert mask[3, -1] == 1


def test_reward_lands_on_the_last_response_token_and_advantages_cover_the_response():
  prompt, lengths, tokens, counts = _rollout_like_generate()
  _, _, mask = build_sequences(jnp.asarray(prompt), jnp.asarray(lengths), jnp.asarray(tokens),
                               jnp.asarray(counts))
  mask = np.asarray(mask)
  rng = np.random.default_rng(3)
  b, t = mask.shape
  last_index = lengths + counts - 2
  logp = rng.normal(size=(b, t)).astype(np.float32) - 3
  ref = rng.normal(size=(b, t)).astype(np.float32) - 3
  kl = np.asarray(ppo_loss.kl_estimate(jnp.asarray(logp), jnp.asarray(ref), 'k1')) * mask
  scores = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
  rewards, non_score = ppo_loss.token_rewards(jnp.asarray(scores), jnp.asarray(kl),
                                              jnp.asarray(mask), 0.05, jnp.asarray(last_index))
  rewards = np.asarray(rewards)
  for row in range(b):
    on = np.flatnonzero(mask[row])
    assert on[-1] == last_index[row]  # the score's position is the last masked target
    np.testing.assert_allclose(rewards[row, last_index[row]],
                               scores[row] - 0.05 * kl[row, last_index[row]], rtol=1e-6)
    others = np.setdiff1d(np.arange(t), [last_index[row]])
    np.testing.assert_allclose(rewards[row, others], -0.05 * kl[row, others], rtol=1e-6)
  values = rng.normal(size=(b, t)).astype(np.float32)
  adv, ret = ppo_loss.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), 1.0,
                          0.95)
  adv = np.asarray(adv)
  assert np.count_nonzero(adv) == int(counts.sum())
  for row in range(b):
    assert np.count_nonzero(adv[row]) == counts[row]
    assert set(np.flatnonzero(adv[row])) == set(np.flatnonzero(mask[row]))
  # Whitened (as _score does) the advantages still live on the response tokens only.
  white = np.asarray(ppo_loss.masked_whiten(jnp.asarray(adv), jnp.asarray(mask)))
  assert np.all(white[mask == 0] == 0.0)
  assert np.count_nonzero(white) == int(counts.sum())
  # A zero-KL, score-only row (γ = λ = 1, V = 0) has advantage = score on every token:
  # the reward sits at the end and flows back over exactly the response.
  adv0, _ = ppo_loss.gae(jnp.asarray(np.asarray(rewards - np.asarray(non_score))),
                         jnp.zeros((b, t)), jnp.asarray(mask), 1.0, 1.0)
  np.testing.assert_allclose(np.asarray(adv0), mask * scores[:, None], rtol=1e-6)
