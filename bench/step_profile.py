"""Where the train step's time goes: a jax.profiler trace of a few steps, each
XLA op matched to its optimized HLO and grouped.

`run.py bench --profile` prints: every matmul shape with its measured GFLOP/s,
and the non-matmul ops grouped by fusion kind and output shape (elementwise,
layout copies, reductions). Times are summed per op as the trace records them
on XLA's CPU threads; ops that run side by side on the two cores both count,
so the column sums can exceed the step's wall time. Some matmuls (weight
gradients) run as asynchronous thunks the trace shows only as their launch;
they appear with an implausible GFLOP/s and their work hides in the others.
"""
import collections
import glob
import gzip
import json
import os
import re

import jax

from bench import synthetic

# Trace events that are runtime bookkeeping, not an XLA op.
_NOT_OPS = ('ThunkExecutor', 'SlinkyThreadPool', 'end:', '$', 'PjitFunction', 'ParseArguments',
            'Common', 'Handle', 'Allocate', 'ThreadpoolListener', 'PythonRef')
_LAYOUT_OPS = {'copy', 'transpose', 'bitcast', 'parameter', 'slice', 'concatenate', 'pad',
               'dynamic-slice', 'dynamic-update-slice', 'reshape', 'broadcast'}


def _dims(shape):
  inside = re.search(r'\[([\d,]*)\]', shape)
  return [int(x) for x in inside.group(1).split(',') if x] if inside else []


def _instructions(body):
  """(name, dims, line) of every instruction a computation's body defines."""
  for line in body.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+)', line)
    if m:
      yield m.group(1), _dims(m.group(2)), line


class OptimizedHlo:
  """The instructions that run as ops: those of every computation but the fused ones
  (names are unique in a module), so the ops of a loop body (gradient accumulation's
  microbatches) resolve as well as the entry's; fused computations are their bodies."""

  def __init__(self, text):
    self.computations = {m.group(1): m.group(2) for m in re.finditer(
        r'^(?:ENTRY )?%([\w.\-]+) .*?\{\n(.*?)^\}', text, re.M | re.S)}
    fused = set(re.findall(r' fusion\(.*calls=%?([\w.\-]+)', text))
    self.lines, self.shapes = {}, {}
    for computation, body in self.computations.items():
      if computation in fused:
        continue
      for name, dims, line in _instructions(body):
        self.lines[name], self.shapes[name] = line, dims

  def body(self, name):
    line = self.lines.get(name, '')
    calls = re.search(r'calls=%?([\w.\-]+)', line)
    return self.computations.get(calls.group(1), line) if calls else line

  def matmuls(self, name):
    """[(flops, 'lhs x rhs -> out')] of every dot the op computes."""
    body = self.body(name)
    shapes = dict(self.shapes)  # a fused body's parameters shadow entry names
    shapes.update((n, dims) for n, dims, _ in _instructions(body))
    found = []
    for line in body.splitlines():
      m = re.match(r'\s*(?:ROOT )?%?[\w.\-]+ = (\S+) dot\(%?([\w.\-]+), %?([\w.\-]+)\)', line)
      if not m:
        continue
      out, lhs, rhs = _dims(m.group(1)), shapes.get(m.group(2), []), shapes.get(m.group(3), [])
      contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', line).group(1)
      k = 1
      for i in (int(x) for x in contracting.split(',') if x):
        k *= lhs[i] if i < len(lhs) else 1
      size = 1
      for x in out:
        size *= x
      found.append((2 * size * k, f'{lhs} x {rhs} -> {out}'))
    return found

  def kind(self, name):
    ops = set(re.findall(r'= \S+ ([a-z][\w\-]*)\(', self.body(name))) - {'parameter'}
    if 'reduce' in ops:
      return 'reduction'
    return 'layout copy' if ops <= _LAYOUT_OPS else 'elementwise'


def _op_times(trace_dir, steps):
  """{op name: (seconds, runs)} per step; an op in a loop body runs once per iteration.
  Every local device runs every op: runs are per device, seconds summed over them."""
  path = sorted(glob.glob(os.path.join(trace_dir, 'plugins/profile/*/*.trace.json.gz')))[-1]
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  times, runs = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and not e['name'].startswith(_NOT_OPS):
      times[e['name']] += e['dur'] / 1e6 / steps
      runs[e['name']] += 1 / steps / jax.local_device_count()
  return {name: (times[name], runs[name]) for name in times}


def profile(config, trace_dir, steps=2):
  """Per-step op times of `config`'s train step, grouped (see the module doc)."""
  spec, state, step_fn, batch = synthetic.train_setup(config)
  with jax.set_mesh(spec.mesh):
    # one compile: the executable whose HLO is read is the one that runs
    compiled = step_fn.jitted.lower(state, batch).compile()
    hlo = OptimizedHlo(compiled.as_text())
    for _ in range(2):  # warm up
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
  matmuls = collections.defaultdict(lambda: [0, 0.0, 0])
  others = collections.defaultdict(lambda: [0.0, 0])
  for name, (seconds, runs) in _op_times(trace_dir, steps).items():
    dots = hlo.matmuls(name)
    if dots:
      for flops, shape in dots:
        entry = matmuls[shape]
        entry[0] += flops * round(runs)
        entry[1] += seconds / len(dots)
        entry[2] += 1
    else:
      shape = hlo.lines.get(name, ' = ?').split(' = ')[1].split(' ')[0].split('{')[0]
      entry = others[(hlo.kind(name), shape)]
      entry[0] += seconds
      entry[1] += 1
  return {'matmuls': [{'shape': s, 'ops': n, 'seconds': t, 'gflops': f / 1e9,
                       'gflop_per_s': f / t / 1e9 if t else 0.0}
                      for s, (f, t, n) in sorted(matmuls.items(), key=lambda kv: -kv[1][1])],
          'other': [{'kind': k, 'shape': s, 'ops': n, 'seconds': t}
                    for (k, s), (t, n) in sorted(others.items(), key=lambda kv: -kv[1][0])],
          'trace_dir': trace_dir}


def format_profile(report, rows=15):
  lines = []
  total = sum(m['seconds'] for m in report['matmuls'])
  flops = sum(m['gflops'] for m in report['matmuls'])
  lines.append(f'matmuls: {flops:.1f} GFLOP per step and device, {total:.3f} s of op time')
  for m in report['matmuls'][:rows]:
    lines.append(f'  {m["seconds"]:7.3f} s  {m["ops"]:3d} ops  {m["gflop_per_s"]:7.0f} GFLOP/s  '
                 f'{m["shape"]}')
  by_kind = collections.Counter()
  for o in report['other']:
    by_kind[o['kind']] += o['seconds']
  lines.append('other ops: ' + ', '.join(f'{k} {v:.3f} s' for k, v in by_kind.most_common()))
  for o in report['other'][:rows]:
    lines.append(f'  {o["seconds"]:7.3f} s  {o["ops"]:3d} ops  {o["kind"]:<12} {o["shape"]}')
  lines.append(f'trace (TensorBoard / Perfetto): {report["trace_dir"]}')
  return '\n'.join(lines)
