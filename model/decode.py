"""KV-cache decoding: prefill the prompt in one pass, then one token per step.

Prompts are right-padded with per-row lengths. Row b's next token is written at
cache index len_b + step; a query at index i sees keys at indices <= i, so the
pad garbage beyond a row's length is always in its future and never attended
(each such slot is overwritten before it becomes visible).
"""
import jax
import jax.numpy as jnp

from model import attention as attention_lib


def init_cache(cfg, batch, length, dtype):
  hd = cfg.head_dim or cfg.d_model // cfg.num_heads
  shape = (batch, length, cfg.num_kv_heads, hd)
  return [{'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)}
          for _ in range(cfg.num_layers)]


def _write(cache_part, new, index):
  """Writes new (B, T, K, D) into cache (B, S, K, D) at per-row start `index`."""
  return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (i, 0, 0)))(
      cache_part, new.astype(cache_part.dtype), index)


def forward_with_cache(model, tokens, start, cache, soft_prompt=None):
  """Logits (B, T, V) for tokens placed at cache indices start[b] + 0..T-1."""
  q_index = start[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
  x, b, t = model.embed_tokens(tokens, q_index, soft_prompt)
  kv_index = jnp.broadcast_to(jnp.arange(cache[0]['k'].shape[1], dtype=jnp.int32),
                              (b, cache[0]['k'].shape[1]))
  mask = kv_index[:, None, :] <= q_index[:, :, None]
  rope_cs = model.rope_tables(q_index)
  new_cache = []
  for block, layer_cache in zip(model.blocks(), cache):
    q, k, v = block.attn.project_qkv(block.attn_norm(x), b, t, rope_cs)
    layer_cache = {'k': _write(layer_cache['k'], k, start),
                   'v': _write(layer_cache['v'], v, start)}
    out = attention_lib.reference(q, layer_cache['k'], layer_cache['v'], mask)
    x = x + block.attn.project_out(out)
    x = x + block.mlp(block.mlp_norm(x))
    new_cache.append(layer_cache)
  return model.logits(x, b, t), new_cache


def sample(logits, key, temperature, top_k, top_p):
  """One token per row. temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""
  logits = logits.astype(jnp.float32)
  greedy = jnp.argmax(logits, axis=-1)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  scaled = logits / jnp.maximum(temperature, 1e-6)
  if top_p < 1.0:
    order = jnp.argsort(-scaled, axis=-1)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # keep a token if the mass before it is < top_p (the first token always stays)
    keep_sorted = jnp.cumsum(probs, axis=-1) - probs < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(order.shape[0])[:, None], order].set(
        keep_sorted)
    scaled = jnp.where(keep, scaled, -jnp.inf)
  sampled = jax.random.categorical(key, scaled, axis=-1)
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def generate(model, prompt, lengths, key, *, max_new_tokens, temperature=0.0, top_k=0,
             top_p=1.0, eos_id=None, return_logits=False, soft_prompt=None):
  """prompt (B, P) right-padded, lengths (B,) → tokens (B, max_new_tokens),
  their count per row (EOS included), and the logits of every step if asked."""
  b, p = prompt.shape
  cfg = model.cfg
  cache = init_cache(cfg, b, p + max_new_tokens, jnp.dtype(cfg.dtype))
  logits, cache = forward_with_cache(model, prompt, jnp.zeros((b,), jnp.int32), cache,
                                     soft_prompt)
  last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
  vocab = logits.shape[-1]

  def step(carry, step_index):
    cache, last, done, key = carry
    key, sub = jax.random.split(key)
    token = sample(last, sub, temperature, top_k, top_p)
    token = jnp.where(done, 0, token)
    finished = done if eos_id is None else done | (token == eos_id)
    next_logits, cache = forward_with_cache(model, token[:, None], lengths + step_index, cache,
                                            soft_prompt)
    out = (token, done, last) if return_logits else (token, done)
    return (cache, next_logits[:, 0], finished, key), out

  init = (cache, last, jnp.zeros((b,), bool), key)
  _, outs = jax.lax.scan(step, init, jnp.arange(max_new_tokens, dtype=jnp.int32))
  tokens, was_done = outs[0].T, outs[1].T
  counts = jnp.sum(~was_done, axis=1)
  if return_logits:
    return tokens, counts, jnp.swapaxes(outs[2], 0, 1).reshape(b, max_new_tokens, vocab)
  return tokens, counts
