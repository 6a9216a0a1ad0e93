"""Training curves as PNG files (matplotlib, no display needed).

One figure per stage, one panel per metric, each a line over the logged steps.
Labels stay ASCII: matplotlib's bundled font has no CJK glyphs.
"""
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top

# stage: (figure title, [(panel title, [(metrics.jsonl key, legend label), ...]), ...])
CURVES = {
    'pretrain': ('Pretraining', [
        ('loss', [('loss', 'train loss'), ('eval_loss', 'validation loss')]),
        ('validation perplexity', [('eval_perplexity', 'validation')])]),
    'sft': ('SFT', [
        ('loss (assistant tokens)', [('loss', 'train'), ('eval_loss', 'held-out')]),
        ('pretraining perplexity (forgetting)', [('pretrain_perplexity', 'validation')])]),
    'reward': ('Reward model', [
        ('preference accuracy', [('accuracy', 'train batch'), ('eval_accuracy', 'held-out')]),
        ('margin', [('margin', 'train batch'), ('eval_margin', 'held-out')])]),
    'ppo': ('PPO', [
        ('score', [('objective/scores', 'score'),
                   ('objective/reward_model_score', 'reward model')]),
        ('KL to reference', [('objective/kl', 'KL')]),
        ('entropy', [('objective/entropy', 'entropy')]),
        ('response length (tokens)', [('response_length', 'mean')])]),
    'grpo': ('GRPO', [
        ('reward (verifiers)', [('reward', 'reward')]),
        ('groups with equal rewards', [('frac_reward_zero_std', 'frac_reward_zero_std')]),
        ('KL to reference', [('kl', 'KL')]),
        ('completion length (tokens)', [('completions/mean_length', 'mean')])]),
    'dpo': ('DPO', [
        ('reward margin', [('rewards/margins', 'train batch'), ('eval_margin', 'held-out')]),
        ('reward accuracy', [('rewards/accuracies', 'train batch'),
                             ('eval_accuracy', 'held-out')])]),
}


def series(rows, key):
  """(steps, values) of one metric, the last record of a step winning."""
  points = {}
  for row in rows:
    value = row.get(key)
    if isinstance(value, (int, float)) and value == value:  # skip NaN
      points[row['step']] = float(value)
  steps = sorted(points)
  return steps, [points[s] for s in steps]


def log_scale(ax):
  """A log y axis labelled 200, 500, 1000, 2000 (not 2x10^2)."""
  ax.set_yscale('log')

  def label(value, _):
    leading = f'{value:.0e}'[0]
    return f'{value:g}' if leading in '125' else ''
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(label))
  ax.yaxis.set_minor_formatter(ticker.FuncFormatter(label))


def plot_panels(path, title, panels, rows):
  """Writes one PNG with a panel per entry that has data; returns the panel titles drawn
  (none drawn: no file, an empty list)."""
  drawn = [(name, [(key, label, *series(rows, key)) for key, label in lines])
           for name, lines in panels]
  drawn = [(name, [line for line in lines if line[2]]) for name, lines in drawn]
  drawn = [(name, lines) for name, lines in drawn if lines]
  if not drawn:
    return []
  # At most two panels a row: every figure keeps the page's width and its labels' size.
  cols, rows_of_panels = min(2, len(drawn)), -(-len(drawn) // 2)
  fig, axes = plt.subplots(rows_of_panels, cols, figsize=(4.2 * cols, 0.4 + 2.9 * rows_of_panels),
                           squeeze=False)
  for ax in axes.flat[len(drawn):]:
    ax.set_visible(False)
  for ax, (name, lines) in zip(axes.flat, drawn):
    for key, label, steps, values in lines:
      ax.plot(steps, values, marker='o' if len(steps) < 12 else None, markersize=3,
              label=label)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel('step')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    values = [v for line in lines for v in line[3]]
    if 'perplexity' in name and min(values) > 0 and max(values) > 5 * min(values):
      log_scale(ax)  # it falls by orders of magnitude early on
    ax.grid(alpha=0.3)
    if len(lines) > 1:
      ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=12)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return [name for name, _ in drawn]


def stage_curves(out_dir, stages):
  """{stage: {'image': file name beside the page, 'panels': [...]}} for the stages whose
  metrics.jsonl has something to draw."""
  images = {}
  for stage, (title, panels) in CURVES.items():
    rows = (stages.get(stage) or {}).get('metrics') or []
    name = f'curves_{stage}.png'
    drawn = plot_panels(os.path.join(out_dir, name), title, panels, rows)
    if drawn:
      images[stage] = {'image': name, 'panels': drawn}
    elif os.path.exists(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))  # an old run's curves: not this one's
  return images


def bits_per_byte_chart(path, bars):
  """Horizontal bars [(label, bits per byte)]; lower is better."""
  bars = [(label, value) for label, value in bars if value is not None]
  if not bars:
    return False
  fig, ax = plt.subplots(figsize=(6.5, 0.6 + 0.5 * len(bars)))
  labels, values = zip(*bars)
  ax.barh(range(len(bars)), values, color=['#4c72b0', '#999999', '#dd8452'][:len(bars)])
  ax.set_yticks(range(len(bars)), labels)
  ax.invert_yaxis()
  for i, value in enumerate(values):
    ax.text(value, i, f' {value:.3f}', va='center', fontsize=9)
  ax.set_xlim(0, max(values) * 1.2)
  ax.set_xlabel('bits per byte of the validation text (lower is better)')
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return True
