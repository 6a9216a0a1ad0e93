"""G answers per prompt in one jitted batch, from the KV-cache sampler PPO uses
(model/decode.py), with each prompt's prefill done once and shared by its G answers.

The prompt's cache (and its last logits) is computed for the P distinct prompts and
repeated G times before decoding, instead of prefilling P·G identical rows. Each
sampled token's log-prob under the sampling distribution (logits / temperature, as
the trainer computes it) is kept, to compare sampler and trainer numerics.
"""
import jax
import jax.numpy as jnp

from model import decode


def generate_groups(model, prompt, lengths, key, g, *, max_new_tokens, temperature, top_p,
                    eos_id, share_prompts=True):
  """prompt (P, L) right-padded, lengths (P,) → tokens (P·G, N), counts (P·G,) (EOS
  included), log-probs (P·G, N) of the sampled tokens (0 after a row's end). Rows
  p·G … p·G + G − 1 answer prompt p."""
  p, length = prompt.shape
  cfg = model.cfg
  if share_prompts:
    cache = decode.init_cache(cfg, p, length + max_new_tokens, jnp.dtype(cfg.dtype))
    logits, cache = decode.forward_with_cache(model, prompt, jnp.zeros((p,), jnp.int32), cache)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    cache = jax.tree.map(lambda c: jnp.repeat(c, g, axis=0), cache)
    last = jnp.repeat(last, g, axis=0)
  else:  # the unshared baseline (bench/grpo_rollout_timing.py): P·G prefills
    rows = jnp.repeat(prompt, g, axis=0)
    cache = decode.init_cache(cfg, p * g, length + max_new_tokens, jnp.dtype(cfg.dtype))
    logits, cache = decode.forward_with_cache(model, rows, jnp.zeros((p * g,), jnp.int32),
                                              cache)
    last = jnp.take_along_axis(logits, (jnp.repeat(lengths, g) - 1)[:, None, None], axis=1)[:, 0]
  lengths = jnp.repeat(lengths, g)
  b = p * g

  def step(carry, step_index):
    cache, last, done, key = carry
    key, sub = jax.random.split(key)
    token = decode.sample(last, sub, temperature, 0, top_p)
    token = jnp.where(done, 0, token)
    logp = jax.nn.log_softmax(last.astype(jnp.float32) / temperature, axis=-1)
    token_logp = jnp.where(done, 0.0, jnp.take_along_axis(logp, token[:, None], axis=1)[:, 0])
    finished = done | (token == eos_id)
    next_logits, cache = decode.forward_with_cache(model, token[:, None], lengths + step_index,
                                                   cache)
    return (cache, next_logits[:, 0], finished, key), (token, done, token_logp)

  init = (cache, last, jnp.zeros((b,), bool), key)
  _, (tokens, was_done, logps) = jax.lax.scan(step, init,
                                              jnp.arange(max_new_tokens, dtype=jnp.int32))
  return tokens.T, jnp.sum(~was_done.T, axis=1), logps.T
