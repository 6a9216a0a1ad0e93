"""The arithmetic of GRPO, as pure functions (TRL's GRPOTrainer, term by term).

Rows are answers, G consecutive rows per prompt (row i belongs to group i // G);
(R, T) arrays use the index convention of ppo_loss: position t holds the
log-prob of the t-th completion token, `mask` marks the tokens that count.

The loss is written as Σ weight · per-token loss with the weights of every row
fixed from the whole generation batch, so splitting the batch into microbatches
and adding their gradients gives exactly the update of one pass:
- grpo: mean over each answer's tokens, then over answers;
- dr_grpo: Σ / (answers · max_completion_length) (Dr. GRPO: no length bias);
- dapo: Σ / (tokens of the whole batch, every microbatch included);
- bnpo: the token mean of each microbatch, averaged over microbatches (TRL's
  per-local-batch normalisation; = dapo with one microbatch).
"""
import jax.numpy as jnp

ADVANTAGE_EPS = 1e-4  # TRL: (r − mean) / (std + 1e-4)


def group_std(x, g):
  """(groups,) sample standard deviation (Bessel's n − 1, as torch.std in TRL)."""
  return jnp.std(x.reshape(-1, g), axis=1, ddof=1)


def all_equal(rewards, g):
  """(groups,) bool: every reward of the group is the same (no learning signal)."""
  grouped = rewards.reshape(-1, g)
  return jnp.all(grouped == grouped[:, :1], axis=1)


def advantages(rewards, g, scale_rewards):
  """(R,) float: r − mean of its group, divided by the group's std (group), the whole
  batch's (batch) or nothing (none), each plus 1e-4. Also (R,) the group std."""
  grouped = rewards.reshape(-1, g)
  centred = (grouped - jnp.mean(grouped, axis=1, keepdims=True)).reshape(-1)
  std = jnp.repeat(group_std(rewards, g), g)
  if scale_rewards == 'group':
    return centred / (std + ADVANTAGE_EPS), std
  if scale_rewards == 'batch':
    return centred / (jnp.std(rewards, ddof=1) + ADVANTAGE_EPS), std
  return centred, std


def _nan_group_stats(x, g):
  grouped = x.reshape(-1, g)
  present = ~jnp.isnan(grouped)
  n = jnp.sum(present, axis=1, keepdims=True)
  mean = jnp.nansum(grouped, axis=1, keepdims=True) / jnp.maximum(n, 1)
  var = jnp.nansum(jnp.square(grouped - mean), axis=1, keepdims=True) / jnp.maximum(n - 1, 1)
  return grouped, mean, jnp.sqrt(var)


def aggregate(per_reward, weights, g, aggregation):
  """(R,) one reward per answer from (R, K) rewards (NaN = not applicable):
  - sum_then_normalize: Σ_k w_k r_k (NaN terms left out); scaling comes later;
  - normalize_then_sum: each reward normalised within its group first (NaN-aware),
    (r − mean) / (std + 1e-4), then Σ_k w_k (TRL multi_objective_aggregation)."""
  weights = jnp.asarray(weights, jnp.float32)
  if aggregation == 'sum_then_normalize':
    return jnp.nansum(per_reward * weights[None], axis=1)
  columns = []
  for k in range(per_reward.shape[1]):
    grouped, mean, std = _nan_group_stats(per_reward[:, k], g)
    columns.append(((grouped - mean) / (std + ADVANTAGE_EPS)).reshape(-1))
  return jnp.nansum(jnp.stack(columns, axis=1) * weights[None], axis=1)


def token_weights(mask, loss_type, max_completion_length, microbatches):
  """(R, T) weights w with loss = Σ w · per-token loss (see the module's docstring)."""
  rows = mask.shape[0]
  if loss_type == 'grpo':
    return mask / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0) / rows
  if loss_type == 'dr_grpo':
    return mask / (rows * max_completion_length)
  if loss_type == 'dapo':
    return mask / jnp.maximum(jnp.sum(mask), 1.0)
  per_micro = mask.reshape(microbatches, -1, mask.shape[1])  # bnpo
  counts = jnp.maximum(jnp.sum(per_micro, axis=(1, 2), keepdims=True), 1.0)
  return (per_micro / counts / microbatches).reshape(mask.shape)


def k3(logp, ref_logp):
  """Per-token KL(π‖ref) estimate exp(ref − π) − (ref − π) − 1 (TRL's, non-negative)."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def per_token_loss(logp, old_logp, advantage, epsilon_low, epsilon_high, ref_logp=None,
                   beta=0.0):
  """−min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) (+ β·k3) per token, and the clip masks
  (low: ρ < 1 − ε_low with A < 0; high: ρ > 1 + ε_high with A > 0, as TRL counts them)."""
  ratio = jnp.exp(logp - old_logp)
  a = advantage[:, None]
  loss = -jnp.minimum(ratio * a, jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * a)
  kl = None
  if beta:
    kl = k3(logp, ref_logp)
    loss = loss + beta * kl
  low = (ratio < 1.0 - epsilon_low) & (a < 0)
  high = (ratio > 1.0 + epsilon_high) & (a > 0)
  return loss, kl, low, high


def masked_mean(x, mask):
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)
