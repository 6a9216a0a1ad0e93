"""The arithmetic of PPO for language models, as pure functions over (B, T) arrays.

Index convention: position t of a (B, T) array belongs to the token *predicted*
at t, i.e. sequence token t + 1; `mask` marks response tokens. Values, log-probs
and rewards all use it, so GAE's "next value" is simply t + 1.
"""
import jax
import jax.numpy as jnp


def masked_mean(x, mask, axis=None):
  return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_whiten(x, mask, shift_mean=True):
  """(x − mean) / std over the masked entries (mean kept when shift_mean is False)."""
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x - mean), mask)
  white = (x - mean) * jax.lax.rsqrt(var + 1e-8)
  return (white if shift_mean else white + mean) * mask


def kl_estimate(logp, ref_logp, kind):
  """Per-token KL(π‖ref) estimate from the sampled token: k1 = log π − log ref;
  k3 = (r − 1) − log r with r = ref/π (non-negative, lower variance; Schulman 2020)."""
  if kind == 'k3':
    log_ratio = ref_logp - logp
    return jnp.expm1(log_ratio) - log_ratio
  return logp - ref_logp


def token_rewards(scores, kl, mask, kl_coef, last_index):
  """−kl_coef·KL on every response token, plus the sequence score on its last one."""
  non_score = -kl_coef * kl * mask
  at_last = jax.nn.one_hot(last_index, mask.shape[1], dtype=non_score.dtype)
  return non_score + scores[:, None] * at_last, non_score


def gae(rewards, values, mask, gamma, lam):
  """(advantages, returns) by the reverse recursion over response tokens only:
  δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γλ·A_{t+1}; past the response V = A = 0."""
  values = values * mask

  def step(carry, xs):
    next_value, next_adv = carry
    r, v, m = xs
    delta = r + gamma * next_value - v
    adv = (delta + gamma * lam * next_adv) * m
    return (v, adv), adv

  xs = (rewards.T, values.T, mask.T)
  zeros = jnp.zeros(rewards.shape[0], rewards.dtype)
  _, adv = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
  advantages = adv.T
  return advantages, (advantages + values) * mask


def policy_loss(logp, old_logp, advantages, mask, clip):
  """Clipped surrogate: mean over response tokens of max(−A·ρ, −A·clip(ρ, 1±ε)).
  Also (clip fraction, approx KL ½(log ρ)², ratio mean)."""
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
  clipfrac = masked_mean((clipped > unclipped).astype(jnp.float32), mask)
  approxkl = 0.5 * masked_mean(jnp.square(log_ratio), mask)
  return loss, clipfrac, approxkl, masked_mean(ratio, mask)


def value_loss(values, old_values, returns, mask, clip):
  """½·mean max((V − R)², (clip(V, V_old ± ε) − R)²) and the clip fraction."""
  clipped = old_values + jnp.clip(values - old_values, -clip, clip)
  unclipped_err = jnp.square(values - returns)
  clipped_err = jnp.square(clipped - returns)
  loss = 0.5 * masked_mean(jnp.maximum(unclipped_err, clipped_err), mask)
  return loss, masked_mean((clipped_err > unclipped_err).astype(jnp.float32), mask)


def entropy(logits, mask):
  """Mean entropy of the policy's next-token distribution over response tokens."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return masked_mean(-jnp.sum(jnp.exp(logp) * logp, axis=-1), mask)


def adaptive_kl(coef, observed_kl, target, horizon, batch):
  """Ziegler et al. (2019): coef ·= 1 + clip(KL/target − 1, ±0.2)·batch/horizon."""
  error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
  return coef * (1.0 + error * batch / horizon)


def repeated_ngram(tokens, mask, n=4):
  """(B,) bool: some n tokens in a row of the response occur twice."""
  t = tokens.shape[1]
  if t < n + 1:
    return jnp.zeros(tokens.shape[0], bool)
  grams = jnp.stack([tokens[:, i:t - n + 1 + i] for i in range(n)], axis=-1)  # (B, G, n)
  valid = jnp.stack([mask[:, i:t - n + 1 + i] for i in range(n)], axis=-1).all(-1)  # (B, G)
  same = (grams[:, :, None, :] == grams[:, None, :, :]).all(-1)  # (B, G, G)
  upper = jnp.triu(jnp.ones(same.shape[1:], bool), k=1)
  both = valid[:, :, None] & valid[:, None, :]
  return (same & upper & both).any(axis=(1, 2))
