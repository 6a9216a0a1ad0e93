"""GRPO's arithmetic (posttrain/grpo_loss.py, grpo_train.completion_mask) against NumPy
written from the formulas, on fixed log-probs, masks and rewards: every loss type and
reward scaling, padded and truncated answers, microbatches, and μ = 1 (ratio exactly 1)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posttrain import grpo_loss
from posttrain.grpo_train import completion_mask

G, N, EOT = 4, 6, 9
RNG = np.random.default_rng(0)
REWARDS = np.array([1.0, 0.0, 0.5, 0.0,   0.2, 0.2, 0.2, 0.2,   3.0, -1.0, 0.0, 1.0],
                   np.float32)  # the middle group: all equal (no signal)
R = len(REWARDS)
# Answers of 1 … N tokens; rows 2 and 7 are cut at N (no end-of-turn), the rest end with it.
COUNTS = np.array([3, 1, 6, 2, 4, 5, 1, 6, 2, 3, 4, 5], np.int32)
TOKENS = np.zeros((R, N), np.int32)
for _row, _count in enumerate(COUNTS):
  TOKENS[_row, :_count] = RNG.integers(10, 50, _count)
  if _row not in (2, 7):
    TOKENS[_row, _count - 1] = EOT
LOGP = RNG.normal(-2.0, 0.5, (R, N)).astype(np.float32)
OLD = (LOGP + RNG.normal(0.0, 0.3, (R, N))).astype(np.float32)  # ratios far from 1: clipping
REF = (LOGP + RNG.normal(0.0, 0.2, (R, N))).astype(np.float32)


def np_advantages(r, scale):
  grouped = r.reshape(-1, G).astype(np.float64)
  centred = (grouped - grouped.mean(1, keepdims=True)).reshape(-1)
  if scale == 'group':
    return centred / (np.repeat(grouped.std(1, ddof=1), G) + 1e-4)
  if scale == 'batch':
    return centred / (r.astype(np.float64).std(ddof=1) + 1e-4)
  return centred


def np_mask(truncated_off):
  mask = (np.arange(N)[None] < COUNTS[:, None]).astype(np.float64)
  if truncated_off:
    ended = TOKENS[np.arange(R), COUNTS - 1] == EOT
    mask *= ended[:, None]
  return mask


def np_per_token(logp, old, adv, lo, hi, ref=None, beta=0.0):
  ratio = np.exp(logp.astype(np.float64) - old)
  a = adv[:, None]
  loss = -np.minimum(ratio * a, np.clip(ratio, 1 - lo, 1 + hi) * a)
  if beta:
    d = ref.astype(np.float64) - logp
    loss = loss + beta * (np.exp(d) - d - 1)
  return loss, (ratio < 1 - lo) & (a < 0), (ratio > 1 + hi) & (a > 0)


def np_loss(per_token, mask, loss_type, micro):
  if loss_type == 'grpo':
    return np.mean((per_token * mask).sum(1) / np.maximum(mask.sum(1), 1))
  if loss_type == 'dr_grpo':
    return (per_token * mask).sum() / (R * N)
  if loss_type == 'dapo':
    return (per_token * mask).sum() / max(mask.sum(), 1)
  parts = [(p * m).sum() / max(m.sum(), 1)
           for p, m in zip(np.split(per_token, micro), np.split(mask, micro))]
  return np.mean(parts)


@pytest.mark.parametrize('scale', ['group', 'batch', 'none'])
def test_advantages_equal_numpy(scale):
  got, std = grpo_loss.advantages(jnp.asarray(REWARDS), G, scale)
  np.testing.assert_allclose(np.asarray(got), np_advantages(REWARDS, scale), atol=1e-6)
  np.testing.assert_allclose(np.asarray(std), np.repeat(
      REWARDS.reshape(-1, G).std(1, ddof=1), G), atol=1e-6)
  group = np.asarray(got).reshape(-1, G)
  assert np.all(np.abs(group[1]) < 1e-3)  # equal rewards: no signal
  np.testing.assert_allclose(group.sum(1), 0.0, atol=1e-5)  # centred within each group
  assert list(np.asarray(grpo_loss.all_equal(jnp.asarray(REWARDS), G))) == [False, True, False]


@pytest.mark.parametrize('truncated_off', [False, True], ids=['kept', 'masked'])
def test_completion_mask_counts_answer_tokens_and_masks_truncated_ones(truncated_off):
  mask, ended = completion_mask(jnp.asarray(TOKENS), jnp.asarray(COUNTS), EOT, truncated_off)
  np.testing.assert_array_equal(np.asarray(mask), np_mask(truncated_off))
  assert list(np.flatnonzero(~np.asarray(ended))) == [2, 7]
  if truncated_off:
    assert np.asarray(mask)[[2, 7]].sum() == 0


@pytest.mark.parametrize('loss_type', ['grpo', 'dr_grpo', 'dapo', 'bnpo'])
@pytest.mark.parametrize('scale', ['group', 'batch', 'none'])
@pytest.mark.parametrize('micro', [1, 3])
@pytest.mark.parametrize('truncated_off', [False, True], ids=['kept', 'masked'])
def test_loss_equals_numpy(loss_type, scale, micro, truncated_off):
  """Σ weight · per-token loss equals the formula, both as one sum and as the sum of
  per-microbatch sums (what the training scan adds up); with ε_high ≠ ε and β > 0."""
  mask = np_mask(truncated_off)
  adv = np_advantages(REWARDS, scale)
  lo, hi, beta = 0.2, 0.28, 0.05
  want_tok, want_low, want_high = np_per_token(LOGP, OLD, adv, lo, hi, REF, beta)
  want = np_loss(want_tok, mask, loss_type, micro)
  adv_j, _ = grpo_loss.advantages(jnp.asarray(REWARDS), G, scale)
  per_tok, kl, low, high = grpo_loss.per_token_loss(jnp.asarray(LOGP), jnp.asarray(OLD), adv_j,
                                                    lo, hi, jnp.asarray(REF), beta)
  weights = grpo_loss.token_weights(jnp.asarray(mask, jnp.float32), loss_type, N, micro)
  got = float(jnp.sum(per_tok * weights))
  assert got == pytest.approx(want, abs=1e-6, rel=1e-5)
  split = sum(float(jnp.sum(p * w)) for p, w in zip(jnp.split(per_tok, micro),
                                                     jnp.split(weights, micro)))
  assert split == pytest.approx(want, abs=1e-6, rel=1e-5)
  np.testing.assert_array_equal(np.asarray(low), want_low)
  np.testing.assert_array_equal(np.asarray(high), want_high)
  assert want_low.sum() > 0 and want_high.sum() > 0  # both clips are exercised
  d = REF.astype(np.float64) - LOGP
  np.testing.assert_allclose(np.asarray(kl), np.exp(d) - d - 1, atol=1e-6)


def test_dapo_normalises_over_the_whole_batch_and_bnpo_over_each_microbatch():
  mask = jnp.asarray(np_mask(False), jnp.float32)
  dapo = grpo_loss.token_weights(mask, 'dapo', N, 3)
  bnpo = grpo_loss.token_weights(mask, 'bnpo', N, 3)
  assert float(jnp.sum(dapo)) == pytest.approx(1.0)
  for part in jnp.split(bnpo, 3):  # each microbatch's weights sum to 1 / microbatches
    assert float(jnp.sum(part)) == pytest.approx(1.0 / 3)
  assert not np.allclose(np.asarray(dapo), np.asarray(bnpo))  # uneven token counts differ


@pytest.mark.parametrize('loss_type', ['grpo', 'dr_grpo', 'dapo', 'bnpo'])
def test_mu_1_ratio_is_exactly_1_and_the_gradient_is_the_advantage(loss_type):
  """At μ = 1 π_old is π detached (TRL): the ratio is exactly 1, nothing is clipped, and
  d loss / d log π = −A · weight per token."""
  adv, _ = grpo_loss.advantages(jnp.asarray(REWARDS), G, 'group')
  mask = jnp.asarray(np_mask(True), jnp.float32)
  weights = grpo_loss.token_weights(mask, loss_type, N, 1)

  def loss(logp):
    per_tok, _, low, high = grpo_loss.per_token_loss(logp, jax.lax.stop_gradient(logp), adv,
                                                     0.2, 0.2)
    return jnp.sum(per_tok * weights), (low, high, jnp.exp(logp - jax.lax.stop_gradient(logp)))
  (value, (low, high, ratio)), grad = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(LOGP))
  assert np.all(np.asarray(ratio) == 1.0)
  assert not np.asarray(low).any() and not np.asarray(high).any()
  np.testing.assert_allclose(np.asarray(grad), -np.asarray(adv)[:, None] * np.asarray(weights),
                             atol=1e-7)
  assert float(value) == pytest.approx(float(jnp.sum(-adv[:, None] * weights)), abs=1e-6)


def test_aggregation_sum_then_normalize_and_normalize_then_sum():
  per = np.stack([REWARDS, RNG.normal(size=R).astype(np.float32)], axis=1)
  per[3, 1] = np.nan  # not applicable to this answer
  w = [1.0, 0.5]
  got = np.asarray(grpo_loss.aggregate(jnp.asarray(per), w, G, 'sum_then_normalize'))
  np.testing.assert_allclose(got, np.nansum(per * np.asarray(w)[None], axis=1), atol=1e-6)
  got = np.asarray(grpo_loss.aggregate(jnp.asarray(per), w, G, 'normalize_then_sum'))
  want = np.zeros(R)
  for k in range(2):
    grouped = per[:, k].reshape(-1, G).astype(np.float64)
    mean = np.nanmean(grouped, 1, keepdims=True)
    std = np.nanstd(grouped, 1, ddof=1, keepdims=True)
    want += np.nan_to_num(((grouped - mean) / (std + 1e-4)).reshape(-1)) * w[k]
  np.testing.assert_allclose(got, want, atol=1e-5)
