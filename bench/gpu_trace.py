"""Where a traced step's device time goes: a jax.profiler trace summarised per
device line (GPU streams, XLA ops) with the busiest names, and how much of the
step's wall time the device streams were busy (idle = launch gaps, host syncs).

  summarise(trace_dir, steps) -> dict (JSON-ready)
"""
import collections
import glob
import gzip
import json
import os
import re


def _load(trace_dir):
  paths = sorted(glob.glob(os.path.join(trace_dir, 'plugins/profile/*/*.trace.json.gz')) or
                 glob.glob(os.path.join(trace_dir, 'plugins/profile/*/perfetto_trace.json.gz')))
  with gzip.open(paths[-1]) as f:
    data = json.load(f)
  return data['traceEvents'] if isinstance(data, dict) else data


def _union(intervals):
  total, end = 0.0, None
  for s, e in sorted(intervals):
    if end is None or s > end:
      total += e - s
      end = e
    elif e > end:
      total += e - end
      end = e
  return total


def _family(name):
  """A kernel or op name without its numeric suffixes (fusion.12 → fusion)."""
  return re.sub(r'[._]\d+$', '', re.sub(r'(\.\d+)+$', '', name))[:120]


def summarise(trace_dir, steps, top=30):
  events = _load(trace_dir)
  processes, threads = {}, {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'process_name':
      processes[e['pid']] = e['args']['name']
    elif e.get('ph') == 'M' and e.get('name') == 'thread_name':
      threads[(e['pid'], e['tid'])] = e['args']['name']
  device_pids = {p for p, n in processes.items() if re.search(r'GPU|TPU|device:', n)}
  lines = collections.defaultdict(list)
  for e in events:
    if e.get('ph') == 'X' and e['pid'] in device_pids:
      lines[(processes[e['pid']], threads.get((e['pid'], e['tid']), str(e['tid'])))].append(e)
  out = {'lines': {}, 'steps': steps}
  stream_intervals = []
  for (process, thread), evs in sorted(lines.items()):
    by_name = collections.Counter()
    by_family = collections.Counter()
    for e in evs:
      by_name[e['name'][:160]] += e['dur'] / steps
      by_family[_family(e['name'])] += e['dur'] / steps
    if thread.lower().startswith('stream'):
      stream_intervals += [(e['ts'], e['ts'] + e['dur']) for e in evs]
    out['lines'][f'{process} / {thread}'] = {
        'events_per_step': len(evs) / steps,
        'sum_us_per_step': sum(e['dur'] for e in evs) / steps,
        'top_names_us': by_name.most_common(top),
        'top_families_us': by_family.most_common(top)}
  if stream_intervals:
    first = min(s for s, _ in stream_intervals)
    last = max(e for _, e in stream_intervals)
    out['stream_span_us_per_step'] = (last - first) / steps
    out['stream_busy_us_per_step'] = _union(stream_intervals) / steps
    out['stream_busy_fraction'] = _union(stream_intervals) / max(last - first, 1e-9)
  return out
