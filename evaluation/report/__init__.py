"""The report card of a pipeline workdir: WORKDIR/report/{index.html, report.md,
report.json} plus the PNG curves beside them.

    from evaluation.report import build_report
    report = build_report(workdir, config)   # the report.json content

It reads what the stages wrote (collect), evaluates each model's latest checkpoint
once (model_evals, cached in WORKDIR/report/cache/), sets the pretrained model's
bits per byte beside xz's (xz_baseline), draws the curves (plots) and writes the
files (render). Stages that are missing are shown as "not run".
"""
import os
import shutil
import time

from evaluation.report import collect
from evaluation.report import plots
from evaluation.report import render
from evaluation.report import tables
from evaluation.report import xz_baseline
from engine import paths

MODEL_STAGES = ('pretrain', 'sft', 'dpo', 'ppo', 'grpo')


def default_config(pipeline):
  """configs/base.py, with the report settings the pipeline ran with (so a later
  `run.py report` finds its cached evaluations)."""
  import ml_collections
  from configs import base
  config = base.get_config()
  saved = ((pipeline or {}).get('config') or {}).get('report')
  if isinstance(saved, dict):
    config.report.update(ml_collections.ConfigDict(saved))
  return config


def model_row(result, reward):
  if result is None:
    return {'status': 'not run'}
  if 'error' in result:
    return {'status': 'error', 'error': result['error']}
  chat = result['chat']
  return {'status': 'ok', 'step': result['step'], 'chat_loss': chat['loss'],
          'chat_perplexity': chat['perplexity'], 'exact_match': chat['exact_match'],
          'f1': chat['f1'], 'languages': chat['languages'], 'tasks': chat['tasks'],
          'language_ok_rate': chat['language_ok_rate'],
          'end_of_turn_rate': chat['end_of_turn_rate'],
          'repeat_4gram_rate': chat['repeat_4gram_rate'],
          'pretrain_perplexity': chat.get('pretrain_perplexity'),
          'reward_model_score': (reward or {}).get('mean'),
          'reward_model_score_stderr': (reward or {}).get('stderr'),
          'answers': chat['answers']}


def xz_result(config, pretrain, cache_dir, write=True):
  import ml_collections
  from configs.errors import UserError
  if not pretrain.get('config'):
    return None
  try:
    train, val = xz_baseline.corpus_texts(ml_collections.ConfigDict(pretrain['config']),
                                          pretrain['dir'])
    return xz_baseline.cached_baseline(train, val, cache_dir,
                                       int(config.report.xz_train_mib * 2**20), write)
  except UserError as e:
    return {'error': str(e)}


def prompt_answers(config, evaluated):
  items = []
  for i, prompt in enumerate(config.report.prompts):
    answers = {stage: {'greedy': r['greedy'][i], 'sampled': r['sampled'][i]}
               for stage, r in evaluated.items() if 'greedy' in r and i < len(r['greedy'])}
    items.append({'prompt': prompt, 'answers': answers})
  return items


def build_report(workdir, config=None, log=print):
  """Builds WORKDIR/report/ and returns what report.json holds. `config` gives the report
  settings (config.report), the mesh and the tokenizer path; None: configs/base.py with
  pipeline.json's report settings. A workdir with no stage folder is a UserError."""
  import jax
  from evaluation.report import model_evals  # jax: only once the workdir looks right
  primary = jax.process_index() == 0  # every process evaluates; only process 0 writes
  start = time.perf_counter()
  done_now = []  # what this build evaluated (not found in the cache)

  def log_and_keep(line):
    done_now.append(line)
    if primary:
      log(line)
  collected = collect.collect(workdir)
  if config is None:
    config = default_config(collected['pipeline'])
  elif 'report' not in config:  # a config file not built on configs/base.py
    config = config.copy_and_resolve_references()
    config.report = default_config(None).report
  stages = collected['stages']
  target_dir = os.path.join(workdir, 'report')
  cache_dir = os.path.join(target_dir, 'cache')
  # The page and its PNGs are drawn on a local disk (matplotlib writes files) and
  # uploaded when the workdir is on gs://.
  out_dir = paths.local_scratch('report-') if paths.is_remote(workdir) else target_dir
  evaluated = {s: model_evals.evaluate_model(config, s, stages[s]['dir'], cache_dir,
                                             log_and_keep)
               for s in MODEL_STAGES if stages[s]['status'] != 'not run'}
  rewards = {}
  if stages['reward']['status'] != 'not run' and any('error' not in r
                                                     for r in evaluated.values()):
    rewards = model_evals.reward_scores(config, stages['reward']['dir'], evaluated,
                                        cache_dir, log_and_keep)
  models = {s: model_row(evaluated.get(s), rewards.get(s)) for s in MODEL_STAGES}
  if isinstance(rewards.get('sft'), dict):  # each model against SFT, prompt by prompt
    for s in MODEL_STAGES:
      if s != 'sft' and isinstance(rewards.get(s), dict):
        models[s]['reward_model_score_vs_sft'] = model_evals.paired_difference(
            evaluated[s]['answers'], rewards[s]['scores'], evaluated['sft']['answers'],
            rewards['sft']['scores'])
  bits = {'model': None, 'xz': None}
  if stages['pretrain']['status'] != 'not run':
    bits['model'] = model_evals.pretrain_bits_per_byte(config, stages['pretrain']['dir'],
                                                       cache_dir, log_and_keep)
    bits['xz'] = xz_result(config, stages['pretrain'], cache_dir, primary)
  images = {}
  if primary and plots.bits_per_byte_chart(os.path.join(out_dir, 'bits_per_byte.png'), [
      ('pretrained model', (bits['model'] or {}).get('bits_per_byte')),
      ('xz -9e', (bits['xz'] or {}).get('bits_per_byte'))]):
    images['bits_per_byte'] = 'bits_per_byte.png'
  curves = plots.stage_curves(out_dir, stages) if primary else {}
  report = {
      'workdir': collected['workdir'], 'commit': collected['commit'],
      'commit_source': collected['commit_source'],
      'stages': {s: dict({k: v for k, v in r.items() if k not in ('metrics', 'config')},
                         **({'key_number': tables.key_number(s, r)} if 'metrics' in r else {}))
                 for s, r in stages.items()},
      'models': models, 'reward_error': rewards.get('error'), 'bits_per_byte': bits,
      'curves': curves, 'images': images,
      'prompts': prompt_answers(config, evaluated),
      'prompt_settings': {k: config.report[k] for k in ('temperature', 'seed',
                                                        'max_new_tokens', 'eval_prompts')},
      'config': collected['config'],
  }
  report['evaluated_now'] = done_now
  report['build_seconds'] = time.perf_counter() - start
  if primary:
    render.write_all(out_dir, report)
    if out_dir != target_dir:
      paths.upload_tree(out_dir, target_dir)
      shutil.rmtree(out_dir, ignore_errors=True)
  return report
