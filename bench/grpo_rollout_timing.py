"""What GRPO's rollout saves, measured: P prompts × G answers of N tokens from one SFT
workdir, three ways, each jitted, median of 5 timed runs after a warm-up:
- shared: the KV-cache sampler with each prompt prefilled once, its cache repeated G
  times (posttrain/grpo_rollout.py, what `run.py grpo` does);
- unshared: the same sampler prefilling all P·G rows;
- no cache: every new token recomputes the whole sequence (prompt + answer so far).
All three sample the same tokens for the same key (checked), so only the time differs.

  .venv/bin/python bench/grpo_rollout_timing.py --workdir=runs/tiny/sft [--prompts=16 --g=8]
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def no_cache_generate(spec, params, prompt, lengths, key, g, n, temperature, eos_id):
  """Sampling without a KV cache: a full forward over (rows, L + N) per new token."""
  import jax
  import jax.numpy as jnp
  from model import decode
  rows = jnp.repeat(prompt, g, axis=0)
  lengths = jnp.repeat(lengths, g)
  seq = jnp.concatenate([rows, jnp.zeros((rows.shape[0], n), rows.dtype)], axis=1)
  positions = jnp.broadcast_to(jnp.arange(seq.shape[1]), seq.shape)

  def step(carry, i):
    seq, done, key = carry
    key, sub = jax.random.split(key)
    segment_ids = (positions < (lengths + i)[:, None]).astype(jnp.int32)
    logits = spec.apply(params, seq, positions, segment_ids)
    last = jnp.take_along_axis(logits, (lengths + i - 1)[:, None, None], axis=1)[:, 0]
    token = jnp.where(done, 0, decode.sample(last, sub, temperature, 0, 1.0))
    seq = jax.vmap(lambda s, t, p: s.at[p].set(t))(seq, token, lengths + i)
    return (seq, done | (token == eos_id), key), (token, done)
  init = (seq, jnp.zeros(rows.shape[0], bool), key)
  _, (tokens, was_done) = jax.lax.scan(step, init, jnp.arange(n))
  return tokens.T, jnp.sum(~was_done.T, axis=1)


def timed(fn, *args):
  import jax
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--prompts', type=int, default=16)
  parser.add_argument('--g', type=int, default=8)
  parser.add_argument('--max_new_tokens', type=int, default=32)
  parser.add_argument('--temperature', type=float, default=0.7)
  parser.add_argument('--out')
  args = parser.parse_args()
  import jax
  import numpy as np
  from flax import nnx
  from configs import tiny
  from data_pipeline import chat_template
  from data_pipeline import grpo_prompts
  from engine import restore_params
  from posttrain import grpo_rollout
  config = tiny.get_config()
  _, params, tokenizer, spec, _, step, _ = restore_params.load(os.path.abspath(args.workdir),
                                                               config)
  records, rows, _ = grpo_prompts.tokenize(grpo_prompts.read(())[:args.prompts], tokenizer,
                                           config.data.seq_len - args.max_new_tokens)
  lengths = np.stack([r['length'][0] for r in rows])
  width = int(-(-lengths.max() // 16) * 16)
  prompt = np.stack([r['prompt'][:width] for r in rows])
  eos = tokenizer.chat_ids[chat_template.END_OF_TURN]
  key = jax.random.key(0)
  g, n, t = args.g, args.max_new_tokens, args.temperature

  def cached(share):
    @jax.jit
    def run(params, prompt, lengths, key):
      model = nnx.merge(spec.graphdef, params)
      return grpo_rollout.generate_groups(model, prompt, lengths, key, g, max_new_tokens=n,
                                          temperature=t, top_p=1.0, eos_id=eos,
                                          share_prompts=share)[:2]
    return run
  uncached = jax.jit(lambda p, x, l, k: no_cache_generate(spec, p, x, l, k, g, n, t, eos))
  with jax.set_mesh(spec.mesh):
    outs = {name: jax.device_get(fn(params, prompt, lengths, key)) for name, fn in
            (('shared', cached(True)), ('unshared', cached(False)), ('no_cache', uncached))}
    same = {name: bool(np.array_equal(outs[name][0], outs['shared'][0]))
            for name in ('unshared', 'no_cache')}
    seconds = {'shared': timed(cached(True), params, prompt, lengths, key),
               'unshared': timed(cached(False), params, prompt, lengths, key),
               'no_cache': timed(uncached, params, prompt, lengths, key)}
  answers = int(outs['shared'][1].sum())
  result = {'checkpoint_step': step, 'prompts': args.prompts, 'g': g, 'max_new_tokens': n,
            'prompt_width': width, 'mean_prompt_tokens': float(lengths.mean()),
            'answer_tokens': answers, 'same_tokens_as_shared': same, 'seconds': seconds,
            'answer_tokens_per_s': {k: answers / v for k, v in seconds.items()},
            'devices': jax.device_count(), 'backend': jax.default_backend()}
  text = json.dumps(result, indent=1)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  print(text)


if __name__ == '__main__':
  main()
