"""One GRPO engine step on the host: rollout (jitted), rewards (Python verifiers on the
answers' text), dynamic sampling, then the jitted training phase (grpo_train.py).

Every process holds every prompt record and receives the whole rollout (replicated),
so each computes the same rewards for all rows; the prompts of a step are found by
their `index` column, gathered from the processes' rows.
"""
import time

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from data_pipeline.global_batch import make_global_batch
from engine.train_step import with_mesh
from model import scalar_head
from posttrain import grpo_loss
from posttrain import grpo_rollout
from posttrain import grpo_train
from posttrain.rollout_sequences import build_sequences


def _global_rows(array):
  """A batch column (rows spread over processes) as one host array on every process."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
  return np.asarray(jax.device_get(array))


def _replicated(mesh, tree):
  """Host arrays as global arrays replicated over the mesh (valid on any process count)."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree)


def make_step(stage, shardings):
  cfg, mesh, g = stage.config.grpo, stage.mesh, stage.num_generations
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def rollout_fn(params, frozen, prompt, length, key):
    model = nnx.merge(stage.spec.graphdef, stage.policy.model_params(params, frozen['base']))
    return grpo_rollout.generate_groups(model, prompt, length, key, g,
                                        max_new_tokens=cfg.max_completion_length,
                                        temperature=cfg.temperature, top_p=cfg.top_p,
                                        eos_id=stage.eot)

  def reward_model_fn(frozen, prompt, length, tokens, counts):
    seq, segment_ids, _ = build_sequences(prompt, length, tokens, counts)
    positions = jax.numpy.broadcast_to(jax.numpy.arange(seq.shape[1]), seq.shape)
    hidden = stage.reward_spec.hidden_states(frozen['reward']['lm'], seq, positions,
                                             segment_ids)
    return scalar_head.scores(frozen['reward']['head'], hidden, segment_ids)[:, 0]

  rollout = with_mesh(mesh, jax.jit(rollout_fn, out_shardings=replicated))
  score_rm = with_mesh(mesh, jax.jit(reward_model_fn, out_shardings=replicated))
  train = with_mesh(mesh, jax.jit(lambda state, frozen, batch: grpo_train.train(
      stage, state, frozen, batch), donate_argnums=0))

  def generate(params, frozen, index, key):
    """One batch of prompts → its groups, rewarded (host arrays)."""
    prompt = np.stack([stage_rows[i]['prompt'] for i in index])
    length = np.stack([stage_rows[i]['length'][0] for i in index])
    prompt_g, length_g = _replicated(mesh, (prompt[:, :_width(length, prompt)], length))
    tokens, counts, logp = jax.device_get(rollout(params, frozen, prompt_g, length_g, key))
    out = {'prompt': np.repeat(prompt, g, axis=0), 'length': np.repeat(length, g),
           'tokens': np.array(tokens), 'counts': np.array(counts),  # writable (resampling)
           'sample_logp': np.array(logp), 'index': np.repeat(index, g)}
    rm = None
    if stage.rewards.uses_reward_model:
      rm = jax.device_get(score_rm(frozen, *_replicated(mesh, (
          out['prompt'], out['length'], out['tokens'], out['counts']))))
    out['per_reward'] = np.asarray(stage.rewards.score(_answers(stage, out), stage.records, rm),
                                   np.float32)
    return out

  stage_rows = stage.prompt_rows

  def step(state, frozen, batch):
    t0 = time.perf_counter()
    keys = jax.random.split(jax.random.wrap_key_data(state['extra']['rng']), 2)
    index = _global_rows(batch['index'])[:, 0]
    out = generate(state['params'], frozen, index, keys[0])
    replaced = 0
    if cfg.drop_zero_std_groups:
      out, replaced = _resample(stage, out, lambda i, key: generate(
          state['params'], frozen, i, key), keys[0])
    t1 = time.perf_counter()
    step_before = state['step'].copy()
    batch_in = {k: out[k] for k in ('prompt', 'length', 'tokens', 'counts', 'sample_logp',
                                     'per_reward')}
    batch_in['prompt'] = out['prompt'][:, :_width(out['length'], out['prompt'])]
    batch_in = _replicated(mesh, batch_in)
    params, opt_state, metrics = train(state, frozen, batch_in)
    new_state = {'step': step_before + 1, 'params': params, 'opt_state': opt_state,
                 'extra': {'rng': jax.random.key_data(keys[1])}}
    new_state = jax.device_put(new_state, shardings)
    jax.block_until_ready(new_state)
    t2 = time.perf_counter()
    metrics = dict(jax.device_get(metrics), **_reward_metrics(stage, out['per_reward']))
    metrics.update({'lr': stage.schedule(step_before * cfg.num_iterations),
                    'time/rollout_s': t1 - t0, 'time/training_s': t2 - t1,
                    'completions/tokens': float(np.sum(out['counts'])),
                    'sampling/resampled_groups': float(replaced)})
    return new_state, metrics
  return step


def _width(lengths, prompt, bucket=16):
  """The prompt columns a batch needs: its longest prompt rounded up to a multiple of
  `bucket` (few shapes to compile), not the padded maximum (most prompts are short:
  the tiny pipeline's prefill and training sequences shrink ~2x)."""
  return int(min(prompt.shape[1], -(-int(np.max(lengths)) // bucket) * bucket))


def _answers(stage, out):
  answers = []
  for row in range(len(out['counts'])):
    ids = [int(t) for t in out['tokens'][row, :out['counts'][row]]]
    ended = bool(ids) and ids[-1] == stage.eot
    ids = ids[:-1] if ended else ids
    record = stage.records[int(out['index'][row])]
    answers.append({'index': int(out['index'][row]), 'text': stage.tokenizer.decode(ids),
                    'ids': ids, 'ended': ended, 'reference': record.get('reference'),
                    'lang': record['lang']})
  return answers


def _zero_std_groups(stage, per_reward):
  rewards = np.asarray(grpo_loss.aggregate(per_reward, stage.rewards.weights,
                                           stage.num_generations,
                                           stage.config.grpo.reward_aggregation))
  return np.flatnonzero(np.asarray(grpo_loss.all_equal(rewards, stage.num_generations)))


def _resample(stage, out, generate, key):
  """Dynamic sampling (DAPO): each group whose rewards are all equal is replaced by a
  group of a freshly drawn prompt whose rewards differ, from at most
  grpo.max_resample_rounds more prompt batches (drawn from the same stream, so the
  checkpointed iterator position covers them). Returns (out, groups replaced)."""
  g, replaced = stage.num_generations, 0
  for round_index in range(stage.config.grpo.max_resample_rounds):
    flat = _zero_std_groups(stage, out['per_reward'])
    if not len(flat):
      break
    batch = make_global_batch(next(stage.data_iter), stage.mesh)
    fresh = generate(_global_rows(batch['index'])[:, 0],
                     jax.random.fold_in(key, round_index + 1))
    usable = [i for i in range(len(fresh['counts']) // g)
              if i not in set(_zero_std_groups(stage, fresh['per_reward']))]
    for target, source in zip(flat, usable):
      rows, src = slice(target * g, (target + 1) * g), slice(source * g, (source + 1) * g)
      for k in out:
        out[k][rows] = fresh[k][src]
      replaced += 1
  return out, replaced


def _reward_metrics(stage, per_reward):
  """rewards/<name>/mean and /std over the answers it applies to (TRL's nanmean/nanstd)."""
  out = {}
  for k, name in enumerate(stage.rewards.names):
    column = per_reward[:, k]
    present = column[~np.isnan(column)]
    if len(present):  # left out when it applied to no answer (None everywhere)
      out[f'rewards/{name}/mean'] = float(np.mean(present))
      out[f'rewards/{name}/std'] = float(np.std(present, ddof=1)) if len(present) > 1 else 0.0
  return out
