"""Validation bits per byte against wall time, for pretraining recipes of the quick start.

  python bench/quality_vs_time.py [--recipes=before,now] [--points=12]
      [--workdir=runs/quality_vs_time] [--out=bench/results/quality_vs_time]

Each recipe (bench/speedrun_sweep.py's RECIPES) runs as the pipeline's pretraining
stage does, also keeping a checkpoint every steps/points steps. Every kept checkpoint
is then scored on the whole validation split (bits per byte, as the report card's),
and placed at the wall time the training loop had run when it was saved (the
metrics line's `time/elapsed_s`: compile, evaluations and saves included). xz -9e
on the same validation text after the training text is the horizontal line.
Writes OUT.json and OUT.png. Run it on an otherwise idle machine.
"""
import argparse
import json
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import speedrun_sweep  # noqa: E402


def recipe_steps(overrides):
  for item in overrides:
    if item.startswith('--config.train.steps='):
      return int(item.split('=', 1)[1])
  from configs import tiny
  return tiny.get_config().train.steps


def scored_curve(pretrain_dir, every):
  """[(step, elapsed seconds, validation bits/byte)] of every kept checkpoint."""
  import ml_collections

  from engine import restore_params
  from evaluation import evaluate
  with open(os.path.join(pretrain_dir, 'metrics.jsonl')) as f:
    elapsed = {r['step']: r['time/elapsed_s'] for r in map(json.loads, f)
               if 'time/elapsed_s' in r}
  with open(os.path.join(pretrain_dir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  curve = []
  for step in sorted(restore_params.all_steps(os.path.join(pretrain_dir, 'checkpoints'))):
    if step in elapsed and (step % every == 0 or step == max(elapsed)):
      summary = evaluate.run_eval(config, pretrain_dir, step=step, batch_size=16)
      curve.append((step, elapsed[step], summary['bits_per_byte']))
  return curve


def plot(path, curves, xz):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, curve in curves.items():
    ax.plot([c[1] for c in curve], [c[2] for c in curve], marker='o', label=name)
  ax.axhline(xz, color='gray', linestyle='--', label=f'xz -9e ({xz:.3f})')
  ax.set_xlabel('wall time of the training loop (s), 2 CPU cores')
  ax.set_ylabel('validation bits per byte')
  ax.set_ylim(top=min(3.2, ax.get_ylim()[1]))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--recipes', default='before,now')
  parser.add_argument('--points', type=int, default=12)
  parser.add_argument('--workdir', default=os.path.join(REPO, 'runs', 'quality_vs_time'))
  parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'quality_vs_time'))
  args = parser.parse_args()
  curves, runs = {}, {}
  for name in args.recipes.split(','):
    overrides = speedrun_sweep.RECIPES[name]
    steps = recipe_steps(overrides)
    every = max(10, steps // args.points // 10 * 10)  # a multiple of log_every
    workdir = os.path.join(args.workdir, name)
    shutil.rmtree(workdir, ignore_errors=True)
    speedrun_sweep.run_py('pipeline', '--config=configs/tiny.py', f'--workdir={workdir}',
                          '--stages=pretrain', *overrides,
                          f'--config.checkpoint.save_every_steps={every}',
                          f'--config.checkpoint.keep_period={every}')
    curves[name] = scored_curve(os.path.join(workdir, 'pretrain'), every)
    runs[name] = {'overrides': overrides, 'checkpoint_every': every}
    print(f'{name}: ' + ', '.join(f'{s}: {t:.0f}s {b:.3f}' for s, t, b in curves[name]),
          flush=True)
  xz = speedrun_sweep.xz_bits_per_byte({})['validation']
  result = {'xz_validation_bpb': xz, 'runs': runs,
            'curves': {n: [{'step': s, 'elapsed_s': t, 'validation_bpb': b} for s, t, b in c]
                       for n, c in curves.items()}}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + '.json', 'w') as f:
    json.dump(result, f, indent=1)
  plot(args.out + '.png', curves, xz)
  print(f'quality_vs_time: {args.out}.json, {args.out}.png')


if __name__ == '__main__':
  main()
