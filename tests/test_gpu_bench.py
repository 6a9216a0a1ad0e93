"""The GPU bench's pieces that run anywhere: nominal peaks, results names, the
trace summary, the benchmark batch, and the table of a GPU result."""
import gzip
import json
import os

import numpy as np
import pytest

from bench import gpu_check
from bench import gpu_trace
from bench import jax_step
from bench import run_bench
from configs.errors import UserError


@pytest.mark.parametrize('kind, tflops', [('NVIDIA H100 80GB HBM3', 989.0), ('NVIDIA H200', 989.0),
                                          ('NVIDIA A100-SXM4-80GB', 312.0),
                                          ('NVIDIA GH200 480GB', 989.0)])
def test_nominal_peak_per_device_kind(kind, tflops):
  assert gpu_check.nominal_peak(kind, 0) == tflops * 1e12
  assert gpu_check.nominal_peak(kind, 100.0) == 100e12  # the flag wins


def test_unknown_gpu_needs_the_peak_flag(monkeypatch):
  assert gpu_check.nominal_peak('NVIDIA L4', 0) is None

  class Device:
    device_kind = 'NVIDIA L4'

  monkeypatch.setattr(run_bench.jax, 'default_backend', lambda: 'gpu')
  monkeypatch.setattr(run_bench.jax, 'devices', lambda: [Device()])
  from configs import tiny
  config = tiny.get_config()
  with pytest.raises(UserError, match='peak_tflops'):
    run_bench.device_info(config)
  config.train.peak_tflops = 121.0
  info, peak = run_bench.device_info(config)
  assert peak == 121e12 and info['peak_source'] == 'train.peak_tflops'
  assert info['device_kind'] == 'NVIDIA L4' and 'jax' in info['versions']


def test_results_file_names_carry_the_device_kind_off_cpu():
  base = {'date': '2026-11-26', 'config': 'gpt2_124m'}
  assert run_bench.results_name({**base, 'backend': 'cpu', 'device_kind': 'cpu'}) == (
      '2026-11-26-gpt2_124m.json')
  assert run_bench.results_name({**base, 'backend': 'gpu',
                                 'device_kind': 'NVIDIA H100 80GB HBM3'}) == (
      '2026-11-26-gpt2_124m-nvidia-h100-80gb-hbm3.json')


def test_gpu_table_without_loader_and_with_the_torch_peer():
  r = {'device_kind': 'NVIDIA H100 80GB HBM3', 'devices': 1, 'backend': 'gpu',
       'versions': {'jax': '0.11.2'}, 'tokens_per_s': 415000.0, 'step_s': 0.0394,
       'compile_s': 13.0, 'model_tflops': 331.7, 'peak_flops': 989e12,
       'peak_source': 'nominal bf16 dense peak of the device kind', 'mfu': 0.335,
       'attention_s': 0.01, 'matmul_skeleton_s': 0.02, 'matmul_skeleton_gflop_per_s': 6e5,
       'peak_rss_mb': 3000.0, 'host_cores': 16, 'loader_skipped': 'no grain here',
       'checkpoint_mb': 1500.0, 'save_blocking_s': 0.5, 'save_total_s': 2.0,
       'step_s_saving_every_step': 0.05, 'async_overhead': 0.2, 'decode_tokens_per_s': 1e4,
       'decode_tokens_per_s_no_cache': 1e3, 'torch_eager_tokens_per_s': 240000.0,
       'torch_compile_tokens_per_s': 339600.0, 'speedup_vs_torch_eager': 1.73,
       'speedup_vs_torch_compile': 1.22, 'torch_compile_mfu': 0.274}
  table = run_bench.format_table(r)
  assert 'NVIDIA H100 80GB HBM3' in table and '33.5%' in table and '27.4%' in table
  assert 'no grain here' in table and '1.22x' in table
  r = {k: v for k, v in r.items() if not k.startswith(('checkpoint_mb', 'save_', 'step_s_saving',
                                                        'async'))}
  assert 'no orbax here' in run_bench.format_table(dict(r, checkpoint_skipped='no orbax here'))


def test_trace_summary_counts_stream_busy_time(tmp_path):
  run = tmp_path / 'plugins' / 'profile' / 'run1'
  os.makedirs(run)
  events = [{'ph': 'M', 'pid': 1, 'name': 'process_name', 'args': {'name': '/device:GPU:0'}},
            {'ph': 'M', 'pid': 1, 'tid': 7, 'name': 'thread_name', 'args': {'name': 'Stream #14'}},
            {'ph': 'M', 'pid': 2, 'name': 'process_name', 'args': {'name': '/host:CPU'}}]
  for step in range(2):  # per step: fusion.1 10 us, gemm 20 us (overlapping 5 us), 10 us idle
    t0 = step * 40
    events += [{'ph': 'X', 'pid': 1, 'tid': 7, 'ts': t0, 'dur': 10, 'name': 'fusion.1'},
               {'ph': 'X', 'pid': 1, 'tid': 7, 'ts': t0 + 5, 'dur': 20, 'name': 'gemm'},
               {'ph': 'X', 'pid': 2, 'tid': 1, 'ts': t0, 'dur': 99, 'name': 'host work'}]
  with gzip.open(run / 'h.trace.json.gz', 'wt') as f:
    json.dump({'traceEvents': events}, f)
  summary = gpu_trace.summarise(str(tmp_path), steps=2)
  line = summary['lines']['/device:GPU:0 / Stream #14']
  assert line['events_per_step'] == 2 and line['sum_us_per_step'] == 30
  assert dict(line['top_families_us']) == {'fusion': 10, 'gemm': 20}
  assert summary['stream_busy_us_per_step'] == 25
  assert summary['stream_span_us_per_step'] == (40 + 25) / 2


def test_benchmark_batch_caps_documents_per_row():
  for cap in (None, 8):
    batch = jax_step.packed_batch(16, 1024, 1000, max_docs=cap)
    seg = batch['segment_ids']
    runs = (np.diff(seg, axis=1) != 0).sum(axis=1) + 1
    assert (seg > 0).all()
    if cap:
      assert runs.max() <= cap
    else:
      assert runs.max() > 8  # the default batch makes the packed kernel fall back
    starts = np.concatenate([np.ones((16, 1), bool), np.diff(seg, axis=1) != 0], axis=1)
    assert (batch['positions'][starts] == 0).all()


def test_prepared_experiments_run_on_cpu_and_the_flat_update_is_the_same(tmp_path):
  """`gpu_experiments.py --groups=next --smoke`: every variant measures, and AdamW over one
  flat vector trains as the per-tensor update (the same loss after the timed steps)."""
  import json
  import subprocess
  import sys
  out = tmp_path / 'next.json'
  subprocess.run([sys.executable, 'bench/gpu_experiments.py', '--smoke', '--groups=next',
                  f'--out={out}', f'--trace_root={tmp_path}/traces'], check=True,
                 capture_output=True, text=True, timeout=600,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  rows = {r['variant']: r for r in json.loads(out.read_text())['groups'][0]['rows']}
  assert set(rows) == {'profile', 'flatopt', 'sgdopt', 'docs8', 'docs8+flatopt'}
  assert all(r['tokens_per_s'] > 0 for r in rows.values()), rows
  assert abs(rows['docs8+flatopt']['last_loss'] - rows['docs8']['last_loss']) < 1e-5
  assert rows['flatopt']['first_loss'] == rows['sgdopt']['first_loss']  # same start
  assert rows['sgdopt']['last_loss'] != rows['flatopt']['last_loss']  # another update
