"""GRPO's jitted training phase over one generation batch: the trainer's log-probs of
the sampled tokens (π_old for μ > 1; compared with the sampler's), advantages, and
grpo.num_iterations optimizer updates of the clipped loss, each summed over
train.microbatches with weights fixed from the whole batch (grpo_loss.token_weights).
"""
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from posttrain import grpo_loss
from posttrain.rollout_sequences import build_sequences
from posttrain.rollout_sequences import token_logps


def completion_logps(stage, model_params, rows, want_entropy=False):
  """(R, N) log-probs of the completion tokens under model_params (logits / temperature),
  and (R, N) the entropy of each next-token distribution when asked."""
  temperature = stage.config.grpo.temperature
  seq, segment_ids, length = rows['seq'], rows['segment_ids'], rows['length']
  positions = jnp.broadcast_to(jnp.arange(seq.shape[1], dtype=jnp.int32), seq.shape)
  model = nnx.merge(stage.spec.graphdef, model_params)
  x, b, t = model.residual_stream(seq, positions, segment_ids)
  n = rows['tokens'].shape[1]
  where = (length - 1)[:, None] + jnp.arange(n, dtype=jnp.int32)[None]  # (R, N)
  # The vocabulary projection only where a completion token is predicted (not over the
  # prompt): at tiny's sizes it is the largest matmul of the forward.
  x = jnp.take_along_axis(x.reshape(b, t, -1), where[..., None], axis=1)
  logits = model.logits(x.reshape(b * n, -1), b, n)
  logp = token_logps(logits, rows['tokens'], temperature)
  if not want_entropy:
    return logp, None
  full = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return logp, -jnp.sum(jnp.exp(full) * full, axis=-1)


def completion_mask(tokens, counts, eot, mask_truncated):
  """(R, N) float: the answer's tokens (EOS included); none of a truncated answer's
  when grpo.mask_truncated_completions. Also (R,) whether each answer ended."""
  n = tokens.shape[1]
  mask = (jnp.arange(n)[None] < counts[:, None]).astype(jnp.float32)
  ended = jnp.take_along_axis(tokens, jnp.maximum(counts - 1, 0)[:, None], axis=1)[:, 0] == eot
  if mask_truncated:
    mask = mask * ended[:, None]
  return mask, ended


def train(stage, state, frozen, rollout):
  """rollout: prompt (R, L), length (R,), tokens (R, N), counts (R,), sample_logp (R, N),
  per_reward (R, K). Returns (params, opt_state, metrics)."""
  cfg, g = stage.config.grpo, stage.num_generations
  micro = stage.config.train.microbatches
  policy = stage.policy
  tokens, counts = rollout['tokens'], rollout['counts']
  seq, segment_ids, _ = build_sequences(rollout['prompt'], rollout['length'], tokens, counts)
  rows = {'seq': seq, 'segment_ids': segment_ids, 'length': rollout['length'],
          'tokens': tokens}
  mask, ended = completion_mask(tokens, counts, stage.eot, cfg.mask_truncated_completions)
  full_mask = (jnp.arange(tokens.shape[1])[None] < counts[:, None]).astype(jnp.float32)
  rewards = grpo_loss.aggregate(rollout['per_reward'], stage.rewards.weights, g,
                                cfg.reward_aggregation)
  advantages, _ = grpo_loss.advantages(rewards, g, cfg.scale_rewards)
  params = state['params']
  trainer_logp, entropy = completion_logps(
      stage, policy.model_params(params, frozen['base']), rows, want_entropy=True)
  trainer_logp = jax.lax.stop_gradient(trainer_logp)
  ref_logp = None
  if cfg.beta:
    ref_logp = completion_logps(stage, policy.reference_params(frozen['base']), rows)[0]
  weights = grpo_loss.token_weights(mask, cfg.loss_type, cfg.max_completion_length, micro)
  eps_high = cfg.epsilon_high or cfg.epsilon
  batch = {**rows, 'weights': weights, 'mask': mask, 'advantages': advantages,
           'old_logp': trainer_logp}
  if ref_logp is not None:
    batch['ref_logp'] = ref_logp

  def micro_loss(p, mb):
    logp, _ = completion_logps(stage, policy.model_params(p, frozen['base']), mb)
    # μ = 1: π_old is π itself (detached, TRL), so the ratio is exactly 1.
    old = jax.lax.stop_gradient(logp) if cfg.num_iterations == 1 else mb['old_logp']
    loss, kl, low, high = grpo_loss.per_token_loss(logp, old, mb['advantages'], cfg.epsilon,
                                                   eps_high, mb.get('ref_logp'), cfg.beta)
    m = mb['mask']
    sums = {'loss': jnp.sum(loss * mb['weights']), 'tokens': jnp.sum(m),
            'clip_low': jnp.sum(low * m), 'clip_high': jnp.sum(high * m),
            'clip_region': jnp.sum((low | high) * m),
            'kl': jnp.sum(kl * m) if kl is not None else jnp.zeros(())}
    return sums['loss'], sums

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def one_update(carry, _):
    p, opt_state = carry
    split = jax.tree.map(lambda x: x.reshape(micro, -1, *x.shape[1:]), batch)

    def accumulate(grads, mb):
      (_, sums), g_mb = grad_fn(p, mb)
      return jax.tree.map(jnp.add, grads, g_mb), sums
    zeros = jax.tree.map(jnp.zeros_like, p)
    grads, sums = jax.lax.scan(accumulate, zeros, split)
    sums = jax.tree.map(jnp.sum, sums)
    updates, opt_state = stage.tx.update(grads, opt_state, p)
    sums['grad_norm'] = optax.global_norm(grads)
    return (optax.apply_updates(p, updates), opt_state), sums

  (params, opt_state), sums = jax.lax.scan(one_update, (params, state['opt_state']), None,
                                           length=cfg.num_iterations)
  tokens_counted = jnp.maximum(sums['tokens'], 1.0)
  lengths = counts.astype(jnp.float32)
  terminated = jnp.sum(ended)
  group_std = grpo_loss.group_std(rewards, g)
  metrics = {
      'loss': jnp.mean(sums['loss']), 'grad_norm': jnp.mean(sums['grad_norm']),
      'reward': jnp.mean(rewards), 'reward_std': jnp.mean(group_std),
      # All G rewards equal (their float std may be ~1e-8, not 0: TRL's isclose).
      'frac_reward_zero_std': jnp.mean(grpo_loss.all_equal(rewards, g).astype(jnp.float32)),
      'completions/mean_length': jnp.mean(lengths),
      'completions/min_length': jnp.min(lengths), 'completions/max_length': jnp.max(lengths),
      'completions/clipped_ratio': 1.0 - jnp.mean(ended.astype(jnp.float32)),
      'completions/mean_terminated_length': jnp.sum(lengths * ended) / jnp.maximum(
          terminated, 1),
      'entropy': grpo_loss.masked_mean(entropy, full_mask),
      'clip_ratio/low_mean': jnp.mean(sums['clip_low'] / tokens_counted),
      'clip_ratio/high_mean': jnp.mean(sums['clip_high'] / tokens_counted),
      'clip_ratio/region_mean': jnp.mean(sums['clip_region'] / tokens_counted),
      'sampling/logprob_diff_max': jnp.max(jnp.abs(rollout['sample_logp'] - trainer_logp)
                                           * full_mask),
  }
  if cfg.beta:
    metrics['kl'] = jnp.mean(sums['kl'] / tokens_counted)
  return params, opt_state, metrics
