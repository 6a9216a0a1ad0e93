"""`run.py generate`: sample continuations of prompts from a checkpoint."""
import time

import jax
import numpy as np
from flax import nnx

from configs.errors import UserError
from data_pipeline import chat_template
from model import decode
from model import quantize as quantize_lib
from evaluation import evaluate
from engine import restore_params
from engine.train_step import with_mesh


def check_sampling_flags(temperature, top_k, top_p, max_new_tokens, vocab_size):
  if temperature < 0:
    raise UserError(f'--temperature={temperature} is negative; use 0 (greedy) or more')
  if not 0 < top_p <= 1:
    raise UserError(f'--top_p={top_p} must be in (0, 1]; 1 turns nucleus sampling off')
  if top_k < 0:
    raise UserError(f'--top_k={top_k} is negative; use 0 (off) or more')
  if top_k > vocab_size:
    raise UserError(f'--top_k={top_k} exceeds the vocabulary ({vocab_size}); use at most that')
  if max_new_tokens < 1:
    raise UserError(f'--max_new_tokens={max_new_tokens} must be >= 1')


def make_generate_fn(spec, max_new_tokens, temperature, top_k, top_p, eos_id):
  def run(params, prompt, lengths, key, soft_prompt=None):
    model = nnx.merge(spec.graphdef, quantize_lib.dequantize(params))
    return decode.generate(model, prompt, lengths, key, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                           soft_prompt=soft_prompt)
  replicated = jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec())
  return with_mesh(spec.mesh, jax.jit(run, out_shardings=(replicated, replicated)))


def encode_prompts(tokenizer, prompts, *, chat, system, add_bos, num_virtual):
  """Prompt ids: plain text (BOS as in training) or the chat template asking for a
  reply; a prompt-tuned model gets its placeholders for the virtual tokens first."""
  if chat:
    if tokenizer.piece(tokenizer.chat_ids['<|end_of_turn|>']) != '<|end_of_turn|>':
      raise UserError('this tokenizer has no chat tokens; --chat needs a tokenizer trained by '
                      '`python run.py tokenizer`')
    encoded = [list(chat_template.prompt_ids(tokenizer, p, system)) for p in prompts]
  else:
    encoded = [([tokenizer.bos_id] if add_bos else []) + tokenizer.encode(p) for p in prompts]
  return [[tokenizer.pad_id] * num_virtual + ids for ids in encoded]


def generate_ids(spec, params, soft_prompt, encoded, *, max_new_tokens, temperature, top_k,
                 top_p, seed, stop_id):
  """(tokens (B, max_new_tokens), counts (B,)) as numpy, for right-padded prompts."""
  longest = max(map(len, encoded))
  if longest + max_new_tokens > spec.cfg.max_seq_len:
    raise UserError(f'a prompt of {longest} tokens plus --max_new_tokens={max_new_tokens} '
                    f'exceeds the context of {spec.cfg.max_seq_len}; shorten the prompt or '
                    'generate fewer tokens')
  prompt = np.zeros((len(encoded), longest), np.int32)
  for row, ids in enumerate(encoded):
    prompt[row, :len(ids)] = ids
  lengths = np.asarray([len(ids) for ids in encoded], np.int32)
  fn = make_generate_fn(spec, max_new_tokens, float(temperature), int(top_k), float(top_p),
                        stop_id)
  replicated = jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec())
  # Global (replicated) inputs, so the same call works when params span processes.
  prompt, lengths = (jax.make_array_from_process_local_data(replicated, x)
                     for x in (prompt, lengths))
  tokens, counts = fn(params, prompt, lengths, jax.random.key(seed), soft_prompt)
  return tuple(np.asarray(x.addressable_data(0)) for x in (tokens, counts))


def run_generate(config, workdir, prompts, *, checkpoint=None, step=None, max_new_tokens=64,
                 temperature=0.8, top_k=0, top_p=1.0, seed=0, quantize=None, chat=False,
                 system=None):
  if not prompts:
    raise UserError('give at least one --prompt')
  model_cfg, params, tokenizer, spec, saved, step, soft_prompt = restore_params.load(
      workdir, config, checkpoint, step)
  check_sampling_flags(temperature, top_k, top_p, max_new_tokens, model_cfg.vocab_size)
  params, weight_info = evaluate.quantize_params(params, quantize, spec.mesh)
  encoded = encode_prompts(tokenizer, prompts, chat=chat, system=system,
                           add_bos=saved.data.add_bos,
                           num_virtual=0 if soft_prompt is None else soft_prompt.shape[0])
  stop_id = tokenizer.chat_ids['<|end_of_turn|>'] if chat else tokenizer.eos_id
  start = time.perf_counter()
  tokens, counts = generate_ids(spec, params, soft_prompt, encoded,
                                max_new_tokens=max_new_tokens, temperature=temperature,
                                top_k=top_k, top_p=top_p, seed=seed, stop_id=stop_id)
  elapsed = time.perf_counter() - start
  samples = []
  for row, text in enumerate(prompts):
    ids = [int(t) for t in tokens[row, :counts[row]] if t != stop_id]
    samples.append({'prompt': text, 'text': tokenizer.decode(ids), 'tokens': int(counts[row]),
                    'ids': ids, 'ended': bool(counts[row] and tokens[row, counts[row] - 1]
                                              == stop_id)})
  return {'samples': samples, 'step': step, 'seconds_with_compile': elapsed, **weight_info}
