"""`run.py bench`: every speed number of a config in one process run.

Train step (tokens/s, step time, compile time, model TFLOP/s, MFU against a
4096² float32 matmul measured here and against `train.peak_tflops` when set),
peak RSS, the data loader alone and its ratio to the step's demand, the async
checkpoint overhead, KV-cache decode speed, and with `--with_torch` the same
model and step in PyTorch, eager and `torch.compile`.
"""
import datetime
import json
import os
import time

from bench import attention_timing
from bench import checkpoint_timing
from bench import decode_timing
from bench import matmul_skeleton
from bench import train_step_timing
from configs.errors import UserError
from data_pipeline import commands as data_commands
from data_pipeline import pretrain_loader
from data_pipeline import tfds_corpus
from data_pipeline import tokenizer as tokenizer_lib
from engine import flops

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def loader_tokens_per_s(config, workdir, batches=40):
  if not os.path.exists(tokenizer_lib.tokenizer_path(workdir, config.tokenizer)):
    data_commands.run_tokenizer(config, workdir)
  tfds_corpus.prepare(config, workdir)
  tokenizer = tokenizer_lib.load_tokenizer(
      tokenizer_lib.tokenizer_path(workdir, config.tokenizer), config.model.vocab_size)
  source = tfds_corpus.open_split(config, workdir, config.data.train_split)
  it = pretrain_loader.train_dataset(config, source, tokenizer, 0, 1)
  next(it)  # threads started, first documents read
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * config.train.batch_size * config.data.seq_len / (time.perf_counter() - start)


def torch_numbers(config, steps):
  try:
    import torch  # noqa: F401
  except ImportError:
    raise UserError('--with_torch needs PyTorch: .venv/bin/pip install -r '
                    'requirements-bench.txt') from None
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


def run_bench(config, workdir, config_name, with_torch=False, steps=5):
  peak = flops.measure_matmul_peak(size=4096)
  result = {'config': config_name, 'date': datetime.date.today().isoformat()}
  result.update(train_step_timing.measure(config, steps, peak=peak))
  result.update(attention_timing.measure(config, steps))
  result.update(matmul_skeleton.measure(config, steps))
  if config.train.peak_tflops:
    result['mfu_nominal'] = (result['model_tflops'] * 1e12 /
                             (config.train.peak_tflops * 1e12 * result['devices']))
  result['loader_tokens_per_s'] = loader_tokens_per_s(config, workdir)
  result['loader_ratio'] = result['loader_tokens_per_s'] / result['tokens_per_s']
  ckpt = checkpoint_timing.measure(config, steps=3)
  result.update({k: v for k, v in ckpt.items() if k != 'step_s'})
  result.update(decode_timing.measure(config.model))
  if with_torch:
    result.update(torch_numbers(config, steps))
    for name in ('eager', 'compile'):
      result[f'speedup_vs_torch_{name}'] = (result['tokens_per_s'] /
                                           result[f'torch_{name}_tokens_per_s'])
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = os.path.join(RESULTS_DIR, f'{result["date"]}-{config_name}.json')
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  result['results_file'] = path
  return result


def format_table(r):
  rows = [('train tokens/s', f'{r["tokens_per_s"]:,.0f}'),
          ('step time (median)', f'{r["step_s"]:.3f} s'),
          ('compile time', f'{r["compile_s"]:.1f} s'),
          ('model TFLOP/s', f'{r["model_tflops"]:.3f}'),
          ('measured matmul peak', f'{r["peak_flops"] / 1e9:.0f} GFLOP/s'),
          ('MFU (measured peak)', f'{r["mfu"]:.1%}'),
          ('attention core fwd+bwd, all layers', f'{r["attention_s"]:.3f} s'),
          ('dense matmuls alone (skeleton)', f'{r["matmul_skeleton_s"]:.3f} s '
                                             f'({r["matmul_skeleton_gflop_per_s"]:.0f} GFLOP/s)'),
          ('peak RSS', f'{r["peak_rss_mb"]:,.0f} MB'),
          ('loader tokens/s', f'{r["loader_tokens_per_s"]:,.0f} ({r["loader_ratio"]:.1f}x '
                              'the step\'s demand)'),
          ('checkpoint size', f'{r["checkpoint_mb"]:.1f} MB'),
          ('save blocking / total', f'{r["save_blocking_s"]:.2f} / {r["save_total_s"]:.2f} s'),
          ('step time, saving every step', f'{r["step_s_saving_every_step"]:.3f} s '
                                           f'(+{r["async_overhead"]:.0%})'),
          ('decode tokens/s (KV cache)', f'{r["decode_tokens_per_s"]:,.0f}'),
          ('decode tokens/s (no cache)', f'{r["decode_tokens_per_s_no_cache"]:,.0f}')]
  if 'mfu_nominal' in r:
    rows.insert(6, ('MFU (nominal peak)', f'{r["mfu_nominal"]:.1%}'))
  if 'torch_eager_tokens_per_s' in r:
    rows += [('torch eager tokens/s', f'{r["torch_eager_tokens_per_s"]:,.0f}'),
             ('torch.compile tokens/s', f'{r["torch_compile_tokens_per_s"]:,.0f}'),
             ('ours / torch eager', f'{r["speedup_vs_torch_eager"]:.2f}x'),
             ('ours / torch.compile', f'{r["speedup_vs_torch_compile"]:.2f}x'),
             ('torch SDPA attention core, all layers', f'{r["torch_attention_s"]:.3f} s'),
             ('torch dense matmuls alone (skeleton)', f'{r["torch_matmul_skeleton_s"]:.3f} s'),
             ('torch matmul peak', f'{r["torch_matmul_peak_flops"] / 1e9:.0f} GFLOP/s')]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)
