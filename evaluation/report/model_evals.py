"""The evaluations behind the report's table and prompts, run once and cached.

Each model (pretrain, sft, dpo, ppo, grpo) gets `run_chat_eval` (held-out chat loss, task
metrics, answer language, end-of-turn and repeat rates, pretraining perplexity) and
its answers to the fixed prompts, greedy and sampled. The reward stage's model then
scores every model's greedy held-out answers, all in one call. Cache files live in
WORKDIR/report/cache/, named by stage, step and a hash of the checkpoint's metadata
(its save time and config) and the settings, so a re-trained stage is evaluated
again and an unchanged one is not.
"""
import hashlib
import json
import math
import os
import statistics

from configs.errors import UserError
from engine import integrity
from engine import restore_params
from evaluation import chat_eval
from evaluation import evaluate
from evaluation import reward_eval
from evaluation import sampling
from evaluation.report import collect
from engine import paths

MODEL_STAGES = ('pretrain', 'sft', 'dpo', 'ppo', 'grpo')
ERRORS = (UserError, integrity.DamagedCheckpoint)


def settings_of(config):
  r = config.report
  return {'eval_prompts': int(r.eval_prompts), 'max_new_tokens': int(r.max_new_tokens),
          'prompts': list(r.prompts), 'temperature': float(r.temperature), 'seed': int(r.seed)}


def checkpoint_id(stage_dir):
  """(step, fingerprint) of the checkpoint the evaluations read: the latest one."""
  directory, step = restore_params.locate(stage_dir, None, None)
  return step, restore_params.fingerprint(directory, step)


def cache_path(cache_dir, name, step, *parts):
  digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f'{name}_step{step}_{digest}.json')


def save_cached(path, value):
  import jax
  if jax.process_index() != 0:  # every process evaluates (collectives); one writes
    return value
  paths.write_atomic(path, json.dumps(value, ensure_ascii=False, default=float))
  return value


def chat_eval_with_answers(config, stage_dir, step, prompts):
  """run_chat_eval's summary, plus the (prompt messages, greedy answer) it generated:
  the reward model scores those, so they are not generated twice."""
  summary = chat_eval.run_chat_eval(config, stage_dir, step=step, prompts=prompts,
                                    keep_answers=True)
  return summary, summary.pop('answered')


def evaluate_model(config, stage, stage_dir, cache_dir, log=print):
  """{'step', 'chat': run_chat_eval summary, 'answers': [[prompt messages, text]],
  'greedy': [text per fixed prompt], 'sampled': [...]}, or {'error': line}."""
  settings = settings_of(config)
  try:
    step, fingerprint = checkpoint_id(stage_dir)
    path = cache_path(cache_dir, stage, step, fingerprint, settings)
    cached = collect.read_json(path)
    if cached is not None:
      return cached
    log(f'report: evaluating {stage} step {step}')
    eval_config = config.copy_and_resolve_references()
    eval_config.sft.max_new_tokens = settings['max_new_tokens']
    summary, answers = chat_eval_with_answers(eval_config, stage_dir, step,
                                              settings['eval_prompts'])
    summary.pop('reward_model_score', None)  # PPO's own; the table scores every model alike
    result = {'step': step, 'fingerprint': fingerprint, 'chat': summary, 'answers': answers}
    for mode, temperature in (('greedy', 0.0), ('sampled', settings['temperature'])):
      generated = sampling.run_generate(
          config, stage_dir, settings['prompts'], step=step, chat=True, seed=settings['seed'],
          max_new_tokens=settings['max_new_tokens'], temperature=temperature)
      result[mode] = [s['text'] for s in generated['samples']]
    return save_cached(path, result)
  except ERRORS as e:
    return {'error': str(e)}


def stderr(values):
  """Standard error of the mean (sample standard deviation / sqrt(n)); 0 for n < 2."""
  return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def mean_and_stderr(values):
  return {'mean': sum(values) / len(values), 'stderr': stderr(values)}


def paired_difference(answers, scores, base_answers, base_scores):
  """{'mean', 'stderr', 'n'} of (score - base score) over the prompts both answered,
  matched by prompt (every model answers the same held-out prompts, so what the prompts
  themselves add to the scores cancels). None if no prompt is shared."""
  key = lambda prompt: json.dumps(prompt, sort_keys=True, ensure_ascii=False)  # noqa: E731
  base = {key(prompt): score for (prompt, _), score in zip(base_answers, base_scores)}
  diffs = [score - base[key(prompt)] for (prompt, _), score in zip(answers, scores)
           if key(prompt) in base]
  if not diffs:
    return None
  return dict(mean_and_stderr(diffs), n=len(diffs))


def reward_scores(config, reward_dir, evaluated, cache_dir, log=print):
  """{stage: {'mean', 'stderr', 'scores'}}: the reward model's score of each of the
  stage's greedy held-out answers, their mean and its standard error over the prompts
  (the cache keeps the scores alone); one reward-model load for every model not
  already cached."""
  try:
    reward_step, reward_fingerprint = checkpoint_id(reward_dir)
  except ERRORS as e:
    return {'error': str(e)}
  scores, todo = {}, []
  for stage, result in evaluated.items():
    if 'error' in result or not result.get('answers'):
      continue
    path = cache_path(cache_dir, f'{stage}_reward', result['step'], result['fingerprint'],
                      reward_fingerprint, result['answers'])
    cached = collect.read_json(path)
    if cached is None or 'scores' not in cached:  # a cache entry from before the scores
      todo.append((stage, path, result['answers']))
    else:
      scores[stage] = dict(mean_and_stderr(cached['scores']), scores=cached['scores'])
  if todo:
    log(f'report: reward model (step {reward_step}) scoring '
        f'{", ".join(stage for stage, _, _ in todo)}')
    conversations = [(prompt, [{'role': 'assistant', 'content': text}])
                     for _, _, answers in todo for prompt, text in answers]
    try:
      flat = reward_eval.reward_model_scores(reward_dir, config, conversations,
                                             batch_size=16)
    except ERRORS as e:
      return dict(scores, error=str(e))
    begin = 0
    for stage, path, answers in todo:
      mine = flat[begin:begin + len(answers)]
      begin += len(answers)
      save_cached(path, {'scores': mine, 'reward_step': reward_step})
      scores[stage] = dict(mean_and_stderr(mine), scores=mine)
  return scores


def pretrain_bits_per_byte(config, pretrain_dir, cache_dir, log=print):
  """evaluate.run_eval on the whole validation split (or report.bpb_batches of it), with
  the pretraining run's own config (its corpus and split names)."""
  import ml_collections
  try:
    step, fingerprint = checkpoint_id(pretrain_dir)
    directory, _ = restore_params.locate(pretrain_dir, None, step)
    saved = ml_collections.ConfigDict(restore_params.read_meta(directory, step)['config'])
    saved.mesh = config.mesh.copy_and_resolve_references()
    batches = int(config.report.bpb_batches)
    path = cache_path(cache_dir, 'pretrain_bpb', step, fingerprint, batches)
    cached = collect.read_json(path)
    if cached is not None:
      return cached
    log(f'report: bits per byte of pretrain step {step} on the validation split')
    summary = evaluate.run_eval(saved, pretrain_dir, step=step, batch_size=16,
                                max_batches=batches)
    return save_cached(path, {k: summary[k] for k in ('bits_per_byte', 'loss', 'perplexity',
                                                      'tokens', 'bytes', 'step')})
  except ERRORS as e:
    return {'error': str(e)}
