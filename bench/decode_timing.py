"""Decode speed: KV-cache sampling against recomputing the full prefix per token."""
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import decode
from model import transformer


def measure(model_cfg, batch=8, prompt_len=32, new_tokens=64):
  model = transformer.Transformer(model_cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  prompt = jnp.asarray(np.random.default_rng(0).integers(8, model_cfg.vocab_size,
                                                          (batch, prompt_len)), jnp.int32)
  lengths = jnp.full((batch,), prompt_len, jnp.int32)

  @jax.jit
  def cached(params, prompt):
    return decode.generate(nnx.merge(graphdef, params), prompt, lengths, jax.random.key(0),
                           max_new_tokens=new_tokens)[0]

  total = prompt_len + new_tokens

  @jax.jit
  def uncached(params, prompt):
    """Greedy, re-running the whole (padded) sequence for every new token."""
    m = nnx.merge(graphdef, params)
    seq = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(prompt)
    positions = jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32), (batch, total))
    segments = jnp.ones((batch, total), jnp.int32)

    def body(i, seq):
      logits = m(seq, positions, segments)
      nxt = jnp.argmax(logits[:, prompt_len + i - 1], axis=-1).astype(jnp.int32)
      return seq.at[:, prompt_len + i].set(nxt)
    return jax.lax.fori_loop(0, new_tokens, body, seq)[:, prompt_len:]

  result = {}
  for name, fn in (('decode_tokens_per_s', cached), ('decode_tokens_per_s_no_cache', uncached)):
    jax.block_until_ready(fn(params, prompt))
    start = time.perf_counter()
    jax.block_until_ready(fn(params, prompt))
    result[name] = batch * new_tokens / (time.perf_counter() - start)
  return result
