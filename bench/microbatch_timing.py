"""The train step with its batch split into microbatches (gradient accumulation):
tokens/s and MFU per `train.microbatches`, on synthetic batches.

  python bench/microbatch_timing.py --config=configs/tiny.py [--microbatches=1,2,4]
      [--rounds=2] [--steps=20] [--out=FILE]

Every count runs `--rounds` times, the counts alternating, in one process, against
one measured matmul peak: on a 2-core CPU the machine's speed drifts by 10-15%
within minutes, so only numbers of one run compare. The update is the same for every
count up to summation order (tests/test_train_step.py).
"""
import argparse
import importlib
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import train_step_timing  # noqa: E402
from configs import validate  # noqa: E402
from configs.errors import UserError  # noqa: E402
from engine import flops  # noqa: E402


def measure(config, counts, rounds, steps):
  """[{'microbatches', 'round', 'tokens_per_s', 'step_s', 'mfu'}] in the order run."""
  peak = flops.peak_flops(config.train.peak_tflops)
  rows = []
  for r in range(rounds):
    for count in counts:
      config.train.microbatches = count
      result = train_step_timing.measure(config, steps, peak=peak)
      rows.append({'microbatches': count, 'round': r, 'tokens_per_s': result['tokens_per_s'],
                   'step_s': result['step_s'], 'mfu': result['mfu']})
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/tiny.py')
  p.add_argument('--microbatches', default='1,2,4')
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--out', default='')
  args = p.parse_args()
  module = args.config.removesuffix('.py').replace('/', '.')
  config = importlib.import_module(module).get_config()
  counts = [int(x) for x in args.microbatches.split(',')]
  for count in counts:  # the run's own checks (batch divisible by the count), before any work
    config.train.microbatches = count
    try:
      validate.validate(config)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
  rows = measure(config, counts, args.rounds, args.steps)
  for row in rows:
    print(f'microbatches {row["microbatches"]}  {row["tokens_per_s"]:10,.0f} tokens/s  '
          f'step {row["step_s"] * 1e3:7.1f} ms  MFU {row["mfu"]:.1%}')
  if args.out:
    import jax
    with open(args.out, 'w') as f:
      json.dump({'config': args.config, 'batch_size': config.train.batch_size,
                 'seq_len': config.data.seq_len, 'devices': jax.device_count(),
                 'device_kind': jax.devices()[0].device_kind, 'host_cores': os.cpu_count(),
                 'jax': jax.__version__, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
