"""The two jitted computations of the serving engine, over a fixed set of slots.

The KV cache holds `max_batch` rows (slots) of the model's whole context. A request
is prefilled alone, in a length bucket (one compile per bucket, done at start), and
its keys/values are copied into its slot's row; then every decode step advances all
slots by one token at once. A slot's row only ever mixes with itself, so a greedy
answer is the same tokens whichever slot it runs in and whoever runs beside it.

Stale entries of a slot's previous request (and a bucket's padding) always sit at
cache indices the new request has not reached: a query at index i sees keys <= i,
and index i is written before it becomes visible (see model/decode.py).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from model import decode
from model import quantize as quantize_lib


def _model(spec, params):
  return nnx.merge(spec.graphdef, quantize_lib.dequantize(params))


def _top1(log_probs):
  """(argmax id, its log-prob) along the last axis."""
  top_id = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
  return top_id, jnp.take_along_axis(log_probs, top_id[..., None], axis=-1)[..., 0]


def sample_rows(logits, seeds, counts, temperature, top_p):
  """One token per row, each row with its own sampling settings and key.

  The key is fold_in(key(seed), tokens sampled so far): a seeded request samples
  the same tokens wherever and with whomever it runs. temperature 0 = greedy."""
  def nucleus_cut(scaled, nucleus):
    order = jnp.argsort(-scaled)
    probs = jax.nn.softmax(scaled[order])
    keep_sorted = jnp.cumsum(probs) - probs < nucleus  # the first token always stays
    keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
    # rows with top_p = 1 stay exactly as they are, whoever else asks for a cut
    return jnp.where(keep | (nucleus >= 1), scaled, -jnp.inf)

  def one(row, seed, count):
    return jax.random.categorical(jax.random.fold_in(jax.random.key(seed), count), row)

  logits = logits.astype(jnp.float32)
  scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
  # Sorting every row's vocabulary is the dear part of sampling on CPU (16 rows of 8,192:
  # ~24 ms, against ~3 ms for the rest), so it only runs when a row asks for top_p < 1.
  scaled = jax.lax.cond(jnp.any((top_p < 1) & (temperature > 0)),
                        lambda x: jax.vmap(nucleus_cut)(x, top_p), lambda x: x, scaled)
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  sampled = jax.vmap(one)(scaled, seeds, counts).astype(jnp.int32)
  return jnp.where(temperature > 0, sampled, greedy)


def make_prefill(spec):
  """prefill(params, cache, last_logits, tokens (1, L), length, slot, soft_prompt) →
  (cache, last_logits, prompt token log-probs (L,), argmax ids (L,), their log-probs
  (L,)); entry j scores token j given tokens < j (entry 0 is meaningless)."""
  def prefill(params, cache, last_logits, tokens, length, slot, soft_prompt):
    model = _model(spec, params)
    bucket = tokens.shape[1]
    own = decode.init_cache(spec.cfg, 1, bucket, cache[0]['k'].dtype)
    logits, own = decode.forward_with_cache(model, tokens, jnp.zeros((1,), jnp.int32), own,
                                            soft_prompt)
    cache = [{name: jax.lax.dynamic_update_slice(full[name], mine[name], (slot, 0, 0, 0))
              for name in ('k', 'v')} for full, mine in zip(cache, own)]
    logits = logits[0].astype(jnp.float32)
    last = jax.lax.dynamic_index_in_dim(logits, length - 1, keepdims=False)
    last_logits = jax.lax.dynamic_update_index_in_dim(last_logits, last, slot, axis=0)
    log_probs = jax.nn.log_softmax(logits[:-1], axis=-1)
    scored = jnp.take_along_axis(log_probs, tokens[0, 1:, None], axis=-1)[:, 0]
    top_id, top_lp = _top1(log_probs)
    pad = lambda x: jnp.concatenate([jnp.zeros((1,), x.dtype), x])
    return cache, last_logits, pad(scored), pad(top_id), pad(top_lp)
  return jax.jit(prefill, donate_argnums=(1, 2))


def make_decode_step(spec):
  """step(params, cache, last_logits, positions, seeds, counts, temperature, top_p,
  soft_prompt) → (cache, next logits, tokens, their log-probs, argmax ids, their
  log-probs): samples one token per slot from last_logits and feeds it at
  `positions`. Log-probs are the model's own (temperature 1), as vLLM reports them."""
  def step(params, cache, last_logits, positions, seeds, counts, temperature, top_p,
           soft_prompt):
    tokens = sample_rows(last_logits, seeds, counts, temperature, top_p)
    log_probs = jax.nn.log_softmax(last_logits, axis=-1)
    token_lp = jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
    top_id, top_lp = _top1(log_probs)
    logits, cache = decode.forward_with_cache(_model(spec, params), tokens[:, None],
                                              positions, cache, soft_prompt)
    return cache, logits[:, 0].astype(jnp.float32), tokens, token_lp, top_id, top_lp
  return jax.jit(step, donate_argnums=(1, 2))


def buckets(max_len, smallest):
  """Prefill lengths: powers of two from `smallest`, and the whole context."""
  sizes, size = [], max(1, min(smallest, max_len))
  while size < max_len:
    sizes.append(size)
    size *= 2
  return sizes + [max_len]
