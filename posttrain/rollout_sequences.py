"""Sampled answers as training rows, shared by the RL stages (ppo, grpo): prompt +
answer sequences with the mask of the answer's targets, and the log-probs of targets."""
import jax
import jax.numpy as jnp


def build_sequences(prompt, length, tokens, counts):
  """Prompt + response per row, right-padded: (seq (B, P+N), seg ids, target mask (B, P+N−1)).

  Target position t predicts seq[t + 1]; the response's tokens are targets
  length−1 … length+count−2."""
  b, p = prompt.shape
  n = tokens.shape[1]
  seq = jnp.concatenate([prompt, jnp.zeros((b, n), prompt.dtype)], axis=1)
  seq = jax.vmap(lambda s, t, i: jax.lax.dynamic_update_slice(s, t, (i,)))(seq, tokens, length)
  index = jnp.arange(p + n, dtype=jnp.int32)[None]
  segment_ids = (index < (length + counts)[:, None]).astype(jnp.int32)
  seq = seq * segment_ids
  target = index[:, 1:]
  mask = ((target >= length[:, None]) & (target < (length + counts)[:, None])).astype(jnp.float32)
  return seq, segment_ids, mask


def token_logps(logits, targets, temperature=1.0):
  """log p(target) under the distribution the rollout sampled from (logits / temperature)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
