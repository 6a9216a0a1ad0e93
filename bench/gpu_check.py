"""One prepared GPU check: attention kernels in the train step, against PyTorch.

  python bench/gpu_check.py --out=FILE [--smoke] [--budget_s=480]

Runs, each part in its own process (JAX preallocates GPU memory; a crash in one
part keeps the others' numbers), writing FILE after every measurement:
1. the fused kernel against `reference`, forward and gradients, bf16 (GPU only);
2. the JAX train step (bf16 compute, float32 params and AdamW state) on synthetic
   packed rows (several documents per row, so the document mask matters):
   gpt2_124m 16 × 1024 and llama_1b 4 × 4096 (remat dots), with the dense-mask
   `xla` path, the packed `cudnn` kernel and the same kernel's document-mask
   fallback (`cudnn_masked`);
3. the PyTorch peer (bench/torch_gpu_peer.py): torch.compile, bf16 autocast,
   SDPA flash attention (causal only: it ignores documents), fused AdamW.
MFU is against a nominal peak per device kind (`--peak_tflops` for others).
`--smoke` runs tiny shapes on whatever backend there is (CPU in CI) in seconds.
Imports only what the model and the step need (no grain, no TFDS).
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from engine.flops import nominal_peak  # noqa: E402  (bench/run_bench.py uses it from here too)

SHAPES = {  # name: (preset, batch, seq_len, remat)
    'gpt2_124m': ('gpt2_124m', 16, 1024, 'none'),
    'llama_1b': ('llama_1b', 4, 4096, 'dots'),
}
SMOKE_SHAPES = {'tiny': ('tiny', 2, 128, 'none')}
KERNELS = ('cudnn', 'gpt2_124m@cudnn/docs8', 'xla', 'cudnn_masked')


def selected(shapes, names):
  return {k: v for k, v in shapes.items() if not names or k in names.split(',')}


def write(path, result):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, path)


def model_config(preset, seq_len, remat):
  import importlib
  m = importlib.import_module(f'configs.{preset}').get_config().model
  m.remat = remat
  m.max_seq_len = max(m.max_seq_len, seq_len)
  return m


def run_jax(args):
  import jax
  from bench import jax_step
  from bench.packed_attention_check import check_fused_against_reference
  result = {'part': 'jax', 'backend': jax.default_backend(),
            'device_kind': jax.devices()[0].device_kind, 'jax': jax.__version__,
            'device_count': jax.device_count()}
  import flax
  result['flax'] = flax.__version__
  deadline = time.time() + args.budget_s
  if jax.default_backend() == 'gpu' and not args.skip_correctness:
    start = time.time()
    try:
      result['correctness'] = {f'{h}q_{k}kv': check_fused_against_reference(heads=h, kv_heads=k)
                               for h, k in ((8, 8), (8, 2))}
    except Exception as e:  # noqa: BLE001 -- the numbers of the other parts still count
      result['correctness'] = {'error': f'{type(e).__name__}: {str(e)[:800]}'}
    result['correctness_s'] = time.time() - start
    write(args.part_out, result)
  peak = nominal_peak(result['device_kind'], args.peak_tflops)
  result['peak_flops'] = peak
  result['steps'] = []
  shapes = selected(SMOKE_SHAPES if args.smoke else SHAPES, args.shapes)
  kernels = ('blocked', 'xla', 'reference') if jax.default_backend() == 'cpu' else KERNELS
  kernels = tuple(args.kernels.split(',')) if args.kernels else kernels
  # the rows the issue asks for first; the fallback's rows only if time is left
  # 'SHAPE@KERNEL' limits a kernel to one shape
  pairs = [(s, k.split('@')[-1]) for s in shapes for k in kernels
           if '@' not in k or k.split('@')[0] == s]
  order = ([p for p in pairs if p[1] != 'cudnn_masked'] +
           [p for p in pairs if p[1] == 'cudnn_masked'])
  for name, kernel in order:
    preset, batch, seq_len, remat = shapes[name]
    row = {'shape': name, 'kernel': kernel, 'batch': batch, 'seq_len': seq_len, 'remat': remat}
    if time.time() > deadline - (80 if 'llama' in name else 35):
      row['skipped'] = 'out of time budget'
    else:
      try:
        row.update(jax_step.measure(model_config(preset, seq_len, remat), kernel, batch,
                                    seq_len, steps=args.steps, peak=peak))
      except Exception as e:  # noqa: BLE001 -- e.g. out of memory: record, go on
        row['error'] = f'{type(e).__name__}: {str(e)[:800]}'
    print(json.dumps(row), flush=True)
    result['steps'].append(row)
    write(args.part_out, result)


def run_torch(args):
  import torch
  from bench import torch_gpu_peer
  cuda = torch.cuda.is_available()
  result = {'part': 'torch', 'torch': torch.__version__,
            'device_kind': torch.cuda.get_device_name() if cuda else 'cpu', 'steps': []}
  peak = nominal_peak(result['device_kind'], args.peak_tflops)
  deadline = time.time() + args.budget_s
  shapes = selected(SMOKE_SHAPES if args.smoke else SHAPES, args.shapes)
  for name, (preset, batch, seq_len, remat) in shapes.items():
    row = {'shape': name, 'kernel': 'torch.compile sdpa', 'batch': batch, 'seq_len': seq_len}
    if time.time() > deadline - (110 if 'llama' in name else 50):
      row['skipped'] = 'out of time budget'
    else:
      try:
        row.update(torch_gpu_peer.measure(model_config(preset, seq_len, remat), batch,
                                          seq_len, steps=args.steps, peak=peak,
                                          compile_model=cuda))
      except Exception as e:  # noqa: BLE001
        row['error'] = f'{type(e).__name__}: {str(e)[:800]}'
    print(json.dumps(row), flush=True)
    result['steps'].append(row)
    write(args.part_out, result)


def orchestrate(args):
  """Runs the parts one after another in fresh processes, merging their files."""
  start = time.time()
  merged = {'smoke': args.smoke, 'parts': {}}
  shares = {'jax': 0.64, 'torch': 0.36}
  for part in ('jax',) if args.no_torch else ('jax', 'torch'):
    part_out = f'{args.out}.{part}.json'
    spent = time.time() - start
    budget = args.budget_s - spent if args.no_torch or part == 'torch' else (
        args.budget_s * shares['jax'])
    cmd = [sys.executable, os.path.abspath(__file__), f'--part={part}', f'--part_out={part_out}',
           f'--budget_s={budget:.0f}', f'--steps={args.steps}',
           f'--peak_tflops={args.peak_tflops}', f'--shapes={args.shapes}',
           f'--kernels={args.kernels}'] + (['--smoke'] if args.smoke else []) + (
               ['--skip_correctness'] if args.skip_correctness else [])
    proc = subprocess.run(cmd, cwd=REPO, timeout=budget + 90, check=False)
    merged['parts'][part] = (json.load(open(part_out)) if os.path.exists(part_out) else {})
    merged['parts'][part]['returncode'] = proc.returncode
    merged['wall_s'] = time.time() - start
    write(args.out, merged)
  print(summary(merged), flush=True)


def summary(merged):
  lines = []
  torch_rows = {r['shape']: r for r in merged['parts'].get('torch', {}).get('steps', [])}
  for row in merged['parts'].get('jax', {}).get('steps', []):
    peer = torch_rows.get(row['shape'], {}).get('tokens_per_s')
    if 'tokens_per_s' in row:
      ratio = f' = {row["tokens_per_s"] / peer:.2f}x torch' if peer else ''
      mfu = f' MFU {row["mfu"]:.1%}' if row.get('mfu') is not None else ''
      lines.append(f'{row["shape"]:10s} {row["kernel"]:20s} {row["tokens_per_s"]:12,.0f} tok/s'
                   f'{mfu}{ratio}')
    else:
      why = row.get('error') or row.get('skipped')
      lines.append(f'{row["shape"]:10s} {row["kernel"]:20s} {why}')
  for row in torch_rows.values():
    lines.append(f'{row["shape"]:10s} torch         ' + (
        f'{row["tokens_per_s"]:12,.0f} tok/s' if 'tokens_per_s' in row else
        str(row.get('error') or row.get('skipped'))))
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='gpu_check.json')
  parser.add_argument('--smoke', action='store_true', help='tiny shapes, any backend')
  parser.add_argument('--budget_s', type=float, default=480.0)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='per-device bf16 dense peak when the device kind is not known')
  parser.add_argument('--shapes', default='', help='comma list of SHAPES keys; all if empty')
  parser.add_argument('--kernels', default='',
                      help="comma list, e.g. 'cudnn:8,cudnn_masked,llama_1b@cudnn/dotsonly' "
                      '(options after / in bench/jax_step.py); default KERNELS')
  parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch peer')
  parser.add_argument('--skip_correctness', action='store_true')
  parser.add_argument('--part', choices=('jax', 'torch'), default=None)
  parser.add_argument('--part_out', default=None)
  args = parser.parse_args()
  if args.smoke:
    args.steps = min(args.steps, 2)
  if args.part == 'jax':
    run_jax(args)
  elif args.part == 'torch':
    run_torch(args)
  else:
    orchestrate(args)


if __name__ == '__main__':
  main()
