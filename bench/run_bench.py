"""`run.py bench`: every speed number of a config in one process run.

Train step (tokens/s, step time, compile time, model TFLOP/s, MFU), peak RSS,
the data loader alone and its ratio to the step's demand, the async checkpoint
overhead, KV-cache decode speed, and with `--with_torch` the same model and
step in PyTorch, eager and `torch.compile`. MFU is against a 4096² float32
matmul measured here on CPU; on a GPU against the device kind's nominal bf16
dense peak (H100/H200 989, A100 312 TFLOP/s; others: `train.peak_tflops`), and
the PyTorch peer is bench/torch_gpu_peer.py (bf16 autocast, SDPA, fused AdamW).
The device and library versions go into the results file.
"""
import datetime
import importlib.metadata
import json
import os
import platform

import jax

from bench import attention_timing
from bench import decode_timing
from bench import gpu_check
from bench import matmul_skeleton
from bench import train_step_timing
from configs.errors import UserError
from engine import flops

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
VERSIONED = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'numpy', 'torch',
             'jax-cuda12-plugin', 'jax-cuda13-plugin', 'nvidia-cudnn-cu12', 'nvidia-cudnn-cu13')


def versions():
  found = {'python': platform.python_version()}
  for name in VERSIONED:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def device_info(config):
  """(device facts for the results file, peak FLOP/s per device to take MFU against)."""
  device = jax.devices()[0]
  info = {'backend': jax.default_backend(), 'device_kind': device.device_kind,
          'devices': jax.device_count(), 'host_cores': os.cpu_count(), 'versions': versions()}
  if info['backend'] == 'cpu':
    info['peak_source'] = 'measured 4096² float32 matmul'
    return info, flops.measure_matmul_peak(size=4096)
  peak = gpu_check.nominal_peak(device.device_kind, config.train.peak_tflops)
  if peak is None:
    raise UserError(f'no nominal bf16 peak is known for {device.device_kind!r}: pass '
                    '--config.train.peak_tflops=<its dense bf16 TFLOP/s per device>')
  info['peak_source'] = ('train.peak_tflops' if config.train.peak_tflops else
                         'nominal bf16 dense peak of the device kind')
  return info, peak


def loader_tokens_per_s(config, workdir, batches=40):
  from bench import loader_timing
  return loader_timing.measure(config, workdir, batch_size=config.train.batch_size,
                               seq_len=config.data.seq_len, threads=(config.data.num_threads,),
                               batches=batches, repeats=1,
                               baseline=False)['loader_tokens_per_s'][config.data.num_threads]


def torch_gpu_numbers(config, steps, peak):
  """The GPU peer: bf16 autocast, SDPA flash attention, fused AdamW; eager and compiled."""
  from bench import torch_gpu_peer
  out = {}
  for name, compiled in (('eager', False), ('compile', True)):
    r = torch_gpu_peer.measure(config.model, config.train.batch_size, config.data.seq_len,
                               steps=steps, peak=peak, compile_model=compiled)
    out.update({f'torch_{name}_tokens_per_s': r['tokens_per_s'],
                f'torch_{name}_step_s': r['step_s'], f'torch_{name}_first_step_s': r['compile_s'],
                f'torch_{name}_mfu': r['mfu']})
  return out


def torch_numbers(config, steps, peak=None):
  try:
    import torch
  except ImportError:
    raise UserError('--with_torch needs PyTorch: .venv/bin/pip install -r '
                    'requirements-bench.txt') from None
  if jax.default_backend() == 'gpu' and torch.cuda.is_available():
    return torch_gpu_numbers(config, steps, peak)
  from bench import torch_reference
  tokens = config.train.batch_size * config.data.seq_len
  out = {'torch_params': torch_reference.count_params(config.model),
         'torch_matmul_peak_flops': torch_reference.matmul_peak(),
         'torch_attention_s': torch_reference.time_attention(config, steps),
         'torch_matmul_skeleton_s': torch_reference.time_matmul_skeleton(config, steps)}
  for name, compiled in (('eager', False), ('compile', True)):
    step_s, first_s = torch_reference.time_train_step(config, compiled, steps)
    out[f'torch_{name}_tokens_per_s'] = tokens / step_s
    out[f'torch_{name}_step_s'] = step_s
    out[f'torch_{name}_first_step_s'] = first_s
  return out


def results_name(result):
  """<date>-<config>.json on CPU; <date>-<config>-<device kind>.json elsewhere."""
  name = f'{result["date"]}-{result["config"]}'
  if result['backend'] != 'cpu':
    kind = ''.join(c if c.isalnum() else '-' for c in result['device_kind'].lower())
    name += '-' + '-'.join(p for p in kind.split('-') if p)
  return name + '.json'


def run_bench(config, workdir, config_name, with_torch=False, steps=5):
  info, peak = device_info(config)
  result = {'config': config_name, 'date': datetime.date.today().isoformat(), **info}
  result.update(train_step_timing.measure(config, steps, peak=peak))
  result.update(attention_timing.measure(config, steps))
  result.update(matmul_skeleton.measure(config, steps))
  if config.train.peak_tflops and result['backend'] == 'cpu':
    result['mfu_nominal'] = (result['model_tflops'] * 1e12 /
                             (config.train.peak_tflops * 1e12 * result['devices']))
  try:
    result['loader_tokens_per_s'] = loader_tokens_per_s(config, workdir)
    result['loader_ratio'] = result['loader_tokens_per_s'] / result['tokens_per_s']
  except ImportError as e:  # a GPU image without the data pipeline's packages
    result['loader_skipped'] = f'the data pipeline cannot be imported here ({e})'
  try:
    from bench import checkpoint_timing  # Orbax and the Grain iterator state
    ckpt = checkpoint_timing.measure(config, steps=3)
    result.update({k: v for k, v in ckpt.items() if k != 'step_s'})
  except ImportError as e:
    result['checkpoint_skipped'] = f'checkpointing cannot be imported here ({e})'
  result.update(decode_timing.measure(config.model))
  if with_torch:
    result.update(torch_numbers(config, steps, peak))
    for name in ('eager', 'compile'):
      result[f'speedup_vs_torch_{name}'] = (result['tokens_per_s'] /
                                           result[f'torch_{name}_tokens_per_s'])
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = os.path.join(RESULTS_DIR, results_name(result))
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  result['results_file'] = path
  return result


def format_table(r):
  rows = [('device', f'{r["device_kind"]} × {r["devices"]} ({r["backend"]}), '
                     f'jax {r["versions"].get("jax", "?")}'),
          ('train tokens/s', f'{r["tokens_per_s"]:,.0f}'),
          ('step time (median)', f'{r["step_s"]:.3f} s'),
          ('compile time', f'{r["compile_s"]:.1f} s'),
          ('model TFLOP/s', f'{r["model_tflops"]:.3f}'),
          ('peak per device', f'{r["peak_flops"] / 1e9:,.0f} GFLOP/s ({r["peak_source"]})'),
          ('MFU', f'{r["mfu"]:.1%}'),
          ('attention core fwd+bwd, all layers', f'{r["attention_s"]:.3f} s'),
          ('dense matmuls alone (skeleton)', f'{r["matmul_skeleton_s"]:.3f} s '
                                             f'({r["matmul_skeleton_gflop_per_s"]:.0f} GFLOP/s)'),
          ('peak RSS', f'{r["peak_rss_mb"]:,.0f} MB'),
          ('loader tokens/s', f'{r["loader_tokens_per_s"]:,.0f} ({r["loader_ratio"]:.1f}x '
                              f'the step\'s demand, {r["host_cores"]} host cores)'
           if 'loader_tokens_per_s' in r else r['loader_skipped']),
          *([('checkpoint', r['checkpoint_skipped'])] if 'checkpoint_skipped' in r else [
              ('checkpoint size', f'{r["checkpoint_mb"]:.1f} MB'),
              ('save blocking / total',
               f'{r["save_blocking_s"]:.2f} / {r["save_total_s"]:.2f} s'),
              ('step time, saving every step', f'{r["step_s_saving_every_step"]:.3f} s '
                                               f'(+{r["async_overhead"]:.0%})')]),
          ('decode tokens/s (KV cache)', f'{r["decode_tokens_per_s"]:,.0f}'),
          ('decode tokens/s (no cache)', f'{r["decode_tokens_per_s_no_cache"]:,.0f}')]
  if 'mfu_nominal' in r:
    rows.insert(7, ('MFU (train.peak_tflops)', f'{r["mfu_nominal"]:.1%}'))
  if 'torch_eager_tokens_per_s' in r:
    rows += [('torch eager tokens/s', f'{r["torch_eager_tokens_per_s"]:,.0f}'),
             ('torch.compile tokens/s', f'{r["torch_compile_tokens_per_s"]:,.0f}'),
             ('ours / torch eager', f'{r["speedup_vs_torch_eager"]:.2f}x'),
             ('ours / torch.compile', f'{r["speedup_vs_torch_compile"]:.2f}x')]
  if 'torch_compile_mfu' in r:
    rows += [('torch.compile MFU', f'{r["torch_compile_mfu"]:.1%}')]
  elif 'torch_attention_s' in r:
    rows += [('torch SDPA attention core, all layers', f'{r["torch_attention_s"]:.3f} s'),
             ('torch dense matmuls alone (skeleton)', f'{r["torch_matmul_skeleton_s"]:.3f} s'),
             ('torch matmul peak', f'{r["torch_matmul_peak_flops"] / 1e9:.0f} GFLOP/s')]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)
