"""The report's tables as (title, note, headers, rows of strings), so the HTML page and
report.md show the same cells. A value that is missing prints as '-'; a stage that
was not run says so in its row."""

MODEL_NAMES = {'pretrain': 'base (pretrain)', 'sft': 'SFT', 'dpo': 'DPO', 'ppo': 'PPO',
               'grpo': 'GRPO'}
STAGE_NAMES = {'pretrain': 'pretrain', 'sft': 'SFT', 'reward': 'reward model', 'dpo': 'DPO',
               'ppo': 'PPO', 'grpo': 'GRPO'}


def num(value, digits=3):
  if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
    return '-'
  return f'{value:.{digits}f}'


def with_stderr(value, stderr):
  """'0.606 ± 0.085', or the value alone when there is no standard error."""
  return num(value) if stderr is None or value is None else f'{num(value)} ± {num(stderr)}'


def signed_with_stderr(difference):
  """'+0.229 ± 0.041' from {'mean', 'stderr'}; '-' without one."""
  if not difference:
    return '-'
  return f'{difference["mean"]:+.3f} ± {difference["stderr"]:.3f}'


def percent(value):
  return '-' if value is None else f'{100 * value:.1f}%'


def mib(value):
  return '-' if value is None else f'{value / 2**20:.2f} MiB'


def duration(seconds):
  if seconds is None:
    return '-'
  return f'{seconds:.0f} s' if seconds < 120 else f'{seconds / 60:.1f} min'


def count(value):
  if value is None:
    return '-'
  return f'{value / 1e6:.2f}M' if value >= 1e6 else f'{value:,}'


def model_table(models, reward_error=None):
  headers = ['model', 'step', 'chat loss', 'EM zh', 'F1 zh', 'EM en', 'F1 en', 'answer lang ok',
             'end-of-turn', 'repeat 4-gram', 'reward-model score', 'score − SFT (paired)',
             'pretrain ppl']
  rows = []
  for stage, name in MODEL_NAMES.items():
    m = models.get(stage) or {'status': 'not run'}
    if m.get('status') != 'ok':
      rows.append([name, m.get('status', 'not run') + (f': {m["error"]}' if m.get('error')
                                                       else '')] + [''] * (len(headers) - 2))
      continue
    lang = m.get('languages') or {}
    rows.append([name, str(m['step']), num(m.get('chat_loss')),
                 num(lang.get('zh', {}).get('exact_match')), num(lang.get('zh', {}).get('f1')),
                 num(lang.get('en', {}).get('exact_match')), num(lang.get('en', {}).get('f1')),
                 num(m.get('language_ok_rate')), num(m.get('end_of_turn_rate')),
                 num(m.get('repeat_4gram_rate')),
                 with_stderr(m.get('reward_model_score'), m.get('reward_model_score_stderr')),
                 signed_with_stderr(m.get('reward_model_score_vs_sft')),
                 num(m.get('pretrain_perplexity'), 2)])
  note = ('Held-out chat split: loss on assistant tokens; exact match (EM) and F1 of greedy '
          'answers against the references, by answer language; the share of answers in the '
          'expected language, ending with end-of-turn, repeating a 4-gram; the reward '
          'model\'s mean score of those answers ± its standard error over the prompts; '
          'score − SFT: the mean over the same prompts of this model\'s score minus SFT\'s, ± '
          'its standard error (paired: within about two of those of 0 is no difference); '
          'the pretraining validation perplexity on its first 16 batches (its rise after '
          'pretraining is forgetting).')
  if reward_error:
    note += f' No reward-model scores: {reward_error}'
  return 'Models', note, headers, rows


def task_table(models):
  tasks = sorted({t for m in models.values() if m.get('status') == 'ok'
                  for t in m.get('tasks') or {}})
  ok = [s for s in MODEL_NAMES if (models.get(s) or {}).get('status') == 'ok']
  if not tasks or not ok:
    return None
  headers = ['task', 'lang', 'n'] + [f'{MODEL_NAMES[s]} EM / F1' for s in ok]
  rows = []
  for task in tasks:
    first = next(models[s]['tasks'][task] for s in ok if task in models[s]['tasks'])
    cells = []
    for s in ok:
      r = models[s]['tasks'].get(task)
      cells.append(f'{num(r["exact_match"])} / {num(r["f1"])}' if r else '-')
    rows.append([task, first.get('lang', '-'), str(first.get('count', '-'))] + cells)
  return 'Task metrics', 'Exact match / F1 of the greedy answers per task.', headers, rows


# stage: (metrics.jsonl key of its key number, label, digits)
KEY_NUMBERS = {'pretrain': ('eval_perplexity', 'validation perplexity', 2),
               'sft': ('eval_loss', 'held-out loss', 3),
               'reward': ('eval_accuracy', 'held-out accuracy', 3),
               'dpo': ('eval_accuracy', 'held-out accuracy', 3),
               'ppo': ('objective/scores', 'score', 3),
               'grpo': ('reward', 'reward', 3)}


def key_number(stage, stage_record):
  key, label, digits = KEY_NUMBERS[stage]
  values = [r[key] for r in stage_record.get('metrics') or [] if key in r]
  return f'{label} {num(values[-1], digits)}' if values else '-'


def stage_table(stages):
  headers = ['stage', 'status', 'steps', 'last logged', 'wall time', 'tokens/s', 'MFU',
             'parameters', 'method', 'latest checkpoint', 'all checkpoints']
  rows = []
  for stage, name in STAGE_NAMES.items():
    s = stages.get(stage) or {'status': 'not run'}
    if s['status'] == 'not run':
      rows.append([name, 'not run'] + [''] * (len(headers) - 2))
      continue
    steps = '-' if s.get('latest_step') is None else str(s['latest_step'])
    if s.get('train_steps') is not None:
      steps += f' / {s["train_steps"]}'
    wall = duration(s.get('wall_s'))
    if s.get('wall_source') == 'file times':
      wall += ' (from file times)'
    rows.append([name, s['status'], steps, s.get('key_number') or '-', wall,
                 num(s.get('tokens_per_s'), 0),
                 percent(s.get('mfu')), count(s.get('params')), s.get('method') or '-',
                 mib(s.get('checkpoint_bytes')), mib(s.get('checkpoints_total_bytes'))])
  walls = [s.get('wall_s') for s in stages.values() if s.get('wall_s') is not None]
  if walls:
    rows.append(['all stages', '', '', '', duration(sum(walls))] + [''] * (len(headers) - 5))
  note = ('Throughput and MFU: medians over the logged steps. Wall time: the stage\'s own '
          'run (from pipeline.json when the pipeline wrote it).')
  return 'Stages', note, headers, rows


def bits_table(bits):
  model, xz = bits.get('model') or {}, bits.get('xz') or {}
  rows = [['pretrained model', num(model.get('bits_per_byte')),
           model.get('error') or (f'step {model.get("step")}: {count(model.get("tokens"))} tokens '
                                  f'over {count(model.get("bytes"))} bytes')
           if model else 'not run'],
          ['xz -9e (LZMA2, 64 MiB dictionary)', num(xz.get('bits_per_byte')),
           xz.get('error') or (f'extra bytes for the validation text after '
                               f'{mib(xz.get("train_bytes"))} of training text'
                               + (' (its tail)' if xz.get('train_truncated') else ''))
           if xz else 'not run']]
  note = ('Bits per byte of the validation text (lower is better). The model: total '
          'negative log-likelihood / ln 2 / UTF-8 bytes. xz: 8 x (size of xz(train + '
          'validation) - size of xz(train)) / bytes of validation.')
  return 'Bits per byte', note, ['compressor', 'bits/byte', 'how'], rows


def all_tables(report):
  tables = [model_table(report['models'], report.get('reward_error')), task_table(report['models']),
            bits_table(report['bits_per_byte']), stage_table(report['stages'])]
  return [t for t in tables if t is not None]
