"""The pipeline's stages: the folder each runs in, what it starts from, how it runs,
and the number its one line reports. Each is the same call as its own command."""
import os

ORDER = ('tokenizer', 'prepare', 'pretrain', 'sft', 'reward', 'ppo', 'dpo', 'grpo', 'report')
FOLDER = {'tokenizer': 'pretrain', 'prepare': 'pretrain', 'pretrain': 'pretrain', 'sft': 'sft',
          'reward': 'reward', 'ppo': 'ppo', 'dpo': 'dpo', 'grpo': 'grpo', 'report': 'report'}
# The finished stages each one starts from (the report reads whatever exists).
NEEDS = {'tokenizer': (), 'prepare': ('tokenizer',), 'pretrain': ('prepare',), 'sft': ('pretrain',),
         'reward': ('sft',), 'ppo': ('sft', 'reward'), 'dpo': ('sft',), 'grpo': ('sft',),
         'report': ()}
TRAINED = ('pretrain', 'sft', 'reward', 'ppo', 'dpo', 'grpo')


def run(name, config, workdir, folders, on_ready):
  """Runs stage `name` in folders[name]; returns its result dict (with 'step' for a
  training stage). `folders` maps every stage to its directory."""
  here = folders[name]
  if name in ('tokenizer', 'prepare'):  # files written once, by process 0
    from data_pipeline import commands as data_commands
    from engine import distributed
    result = {}
    if name == 'tokenizer':
      distributed.on_first_process(lambda: result.update(
          vocab_size=data_commands.run_tokenizer(config, here).vocab_size))
    else:
      distributed.on_first_process(lambda: data_commands.run_prepare(config, here))
    return result
  if name == 'pretrain':
    from pretrain import trainer
    return trainer.run_pretrain(config, here, resume=True, on_ready=on_ready)
  if name == 'sft':
    from posttrain import sft
    return sft.run_sft(config, here, folders['pretrain'], resume=True, on_ready=on_ready)
  if name == 'reward':
    from posttrain import reward
    return reward.run_reward(config, here, folders['sft'], resume=True, on_ready=on_ready)
  if name == 'dpo':
    from posttrain import dpo
    return dpo.run_dpo(config, here, folders['sft'], resume=True, on_ready=on_ready)
  if name == 'ppo':
    from posttrain import ppo_run
    result = ppo_run.run_ppo(config, here, folders['sft'], folders['reward'], resume=True,
                             on_ready=on_ready)
    return {**_last_logged(here, ('objective/scores', 'objective/kl')), **result}
  if name == 'grpo':  # the default rewards are verifiers: no reward model needed
    from posttrain import grpo_run
    result = grpo_run.run_grpo(config, here, folders['sft'], resume=True, on_ready=on_ready)
    return {**_last_logged(here, ('reward', 'frac_reward_zero_std')), **result}
  if name == 'report':
    from evaluation import report
    built = report.build_report(workdir, config)
    bpb = built.get('bits_per_byte') or {}
    model, xz = bpb.get('model') or {}, bpb.get('xz') or {}
    return {'index': os.path.join(workdir, 'report', 'index.html'),
            'bits_per_byte': model.get('bits_per_byte'), 'xz_bits_per_byte': xz.get('bits_per_byte')}
  raise ValueError(name)


def _last_logged(workdir, keys):
  """The last metrics.jsonl values of `keys` (PPO logs its score per iteration)."""
  from evaluation.report import collect
  found = {}
  for row in collect.read_metrics(os.path.join(workdir, 'metrics.jsonl')):
    found.update({k: row[k] for k in keys if k in row})
  return found


def summary(name, result):
  """The stage's key numbers, for its line and pipeline.json."""
  pick = {
      'tokenizer': ('vocab_size',),
      'pretrain': ('eval_loss', 'eval_perplexity'),
      'sft': ('eval_loss', 'pretrain_perplexity'),
      'reward': ('eval_accuracy',),
      'dpo': ('eval_accuracy', 'eval_margin'),
      'ppo': ('objective/scores', 'objective/kl'),
      'grpo': ('reward', 'frac_reward_zero_std'),
      'report': ('index', 'bits_per_byte', 'xz_bits_per_byte'),
  }.get(name, ())
  out = {k: result[k] for k in pick if k in result}
  if 'step' in result:
    out['step'] = result['step']
  return out


def describe(name, numbers):
  """The words of a finished stage's line."""
  n = numbers
  if name == 'tokenizer' and 'vocab_size' in n:
    return f'{n["vocab_size"]} pieces'
  if name == 'pretrain' and 'eval_perplexity' in n:
    return f'step {n["step"]}, validation perplexity {n["eval_perplexity"]:.2f}'
  if name == 'sft' and 'eval_loss' in n:
    return f'step {n["step"]}, held-out assistant loss {n["eval_loss"]:.4f}'
  if name == 'reward' and 'eval_accuracy' in n:
    return f'step {n["step"]}, held-out pair accuracy {n["eval_accuracy"]:.3f}'
  if name == 'dpo' and 'eval_accuracy' in n:
    return (f'step {n["step"]}, held-out implicit-reward accuracy {n["eval_accuracy"]:.3f}, '
            f'margin {n.get("eval_margin", float("nan")):.3f}')
  if name == 'ppo' and 'objective/scores' in n:
    return (f'iteration {n["step"]}, reward-model score {n["objective/scores"]:.3f}, '
            f'KL {n.get("objective/kl", float("nan")):.3f}')
  if name == 'grpo' and 'reward' in n:
    return (f'step {n["step"]}, reward {n["reward"]:.3f}, groups without signal '
            f'{n.get("frac_reward_zero_std", float("nan")):.2f}')
  if name == 'report' and n.get('bits_per_byte') and n.get('xz_bits_per_byte'):
    verdict = 'beats' if n['bits_per_byte'] < n['xz_bits_per_byte'] else 'does not beat'
    return (f'{n["index"]}; the pretrained model\'s {n["bits_per_byte"]:.3f} bits/byte '
            f'{verdict} xz -9e ({n["xz_bits_per_byte"]:.3f})')
  if name == 'report':
    return n.get('index', 'built')
  return ', '.join(f'{k} {v}' for k, v in n.items()) or 'ready'
