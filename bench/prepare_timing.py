"""`prepare` throughput and memory: MB/s, documents/s and peak RSS per input format.

  python bench/prepare_timing.py [--size_mb=2048] [--workers=1,2] [--rss_jsonl_mb=4096]

Generates one corpus per format (text, JSONL, JSONL.zst, Parquet) holding the same
documents (`--size_mb` of document text each, in `--files` files) in a temp folder,
then times `tfds_corpus.prepare` on each with 1 and 2 workers. Each run is a fresh
process that imports JAX first, as `run.py prepare` does, so its memory is the
command's. Reported: seconds, document-text MB/s (the same bytes in every format,
so formats compare), documents/s, and peak RSS: of the whole process tree (summed
from /proc every 0.1 s; shared library pages count once per process, so it is an
upper bound) and of the largest single process (getrusage, self and children).
`--rss_jsonl_mb` also runs the real `run.py prepare` on one JSONL file of that size
(the issue's bound: under 1 GB on a 4 GB file). Results: bench/results/<date>-prepare-
<size>mb.json and a table on stdout.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ('text', 'jsonl', 'jsonl.zst', 'parquet')


def _vocabulary(rng):
  letters = 'abcdefghijklmnopqrstuvwxyz'
  words = [''.join(rng.choice(letters) for _ in range(rng.randint(1, 10))) for _ in range(20000)]
  words += ['中文', '数据', 'données', 'Straße', 'naïve', '—', '2024', 'e.g.']
  return words


def _documents(seed, total_bytes):
  """Yields lists of documents (about 5 MB of text each) until `total_bytes` of text:
  Zipf-distributed words, 1-6 lines of 8-120 words, ~1.4 KB on average."""
  import random
  import numpy as np
  rng = np.random.default_rng(seed)
  words = _vocabulary(random.Random(seed))
  weights = 1.0 / np.arange(1, len(words) + 1)
  weights /= weights.sum()
  made = 0
  while made < total_bytes:
    line_counts = rng.integers(1, 7, size=3500)
    line_lengths = rng.integers(8, 121, size=int(line_counts.sum()))
    drawn = [words[i] for i in rng.choice(len(words), size=int(line_lengths.sum()), p=weights)]
    ends = np.cumsum(line_lengths).tolist()
    lines = [' '.join(drawn[a:b]) for a, b in zip([0] + ends[:-1], ends)]
    line_ends = np.cumsum(line_counts).tolist()
    batch = ['\n'.join(lines[a:b]) for a, b in zip([0] + line_ends[:-1], line_ends)]
    made += sum(len(d.encode()) for d in batch)
    yield batch


def generate(folder, size_mb, files, seed=0):
  """The same documents as text, JSONL, JSONL.zst and Parquet: {format: (dir, stored
  bytes)}, plus (documents, text bytes)."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard
  dirs = {f: os.path.join(folder, f.replace('.', '_')) for f in FORMATS}
  for d in dirs.values():
    os.makedirs(d)
  per_file = size_mb * 2**20 / files
  count = text_bytes = 0
  batches = _documents(seed, size_mb * 2**20)
  for index in range(files):
    name = f'part-{index:03d}'
    with open(os.path.join(dirs['text'], f'{name}.txt'), 'w') as text, \
         open(os.path.join(dirs['jsonl'], f'{name}.jsonl'), 'w') as jsonl, \
         open(os.path.join(dirs['jsonl.zst'], f'{name}.jsonl.zst'), 'wb') as zst_file, \
         zstandard.ZstdCompressor(level=3).stream_writer(zst_file) as zst:
      parquet = pq.ParquetWriter(os.path.join(dirs['parquet'], f'{name}.parquet'),
                                 pa.schema([('id', pa.int64()), ('text', pa.string())]))
      written = 0
      for batch in batches:
        lines = ''.join(json.dumps({'text': d, 'id': count + i}, ensure_ascii=False) + '\n'
                        for i, d in enumerate(batch))
        text.write('\n\n'.join(batch) + '\n\n')
        jsonl.write(lines)
        zst.write(lines.encode())
        parquet.write_table(pa.table({'id': list(range(count, count + len(batch))),
                                      'text': batch}))  # one row group per batch (~5 MB)
        size = sum(len(d.encode()) for d in batch)
        count, text_bytes, written = count + len(batch), text_bytes + size, written + size
        if written >= per_file and index < files - 1:
          break
      parquet.close()
  stored = {f: sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
            for f, d in dirs.items()}
  return {f: (dirs[f], stored[f]) for f in FORMATS}, count, text_bytes


def _tree_rss(root):
  """Resident bytes of `root` and all its descendants (Linux /proc)."""
  parents = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          parents[int(entry)] = int(f.read().rsplit(')', 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        pass
  tree, frontier = {root}, [root]
  while frontier:
    pid = frontier.pop()
    for child, parent in parents.items():
      if parent == pid and child not in tree:
        tree.add(child)
        frontier.append(child)
  total = 0
  for pid in tree:
    try:
      with open(f'/proc/{pid}/statm') as f:
        total += int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, IndexError, ValueError):
      pass
  return total


def measured(command, cwd=REPO):
  """Runs `command`; returns (CompletedProcess, wall seconds, peak tree RSS bytes)."""
  proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  peak, done = [0], threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], _tree_rss(proc.pid))
      done.wait(0.1)
  sampler = threading.Thread(target=sample, daemon=True)
  start = time.perf_counter()
  sampler.start()
  stdout, stderr = proc.communicate()
  wall = time.perf_counter() - start
  done.set()
  sampler.join()
  if proc.returncode:
    raise RuntimeError(f'{command} failed:\n{stderr[-3000:]}')
  return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), wall, peak[0]


def run_one(spec):
  """In a fresh process: import JAX (as run.py does), time prepare, report rusage."""
  import resource
  sys.path.insert(0, REPO)
  import jax  # noqa: F401  (the command's parent process holds it)
  from configs import tiny
  from data_pipeline import tfds_corpus
  config = tiny.get_config()
  config.data.train_files = (spec['train'],)
  config.data.eval_files = (spec['eval'],)
  config.data.prepare_workers = spec['workers']
  start = time.perf_counter()
  _, counts = tfds_corpus.prepare(config, spec['workdir'])
  seconds = time.perf_counter() - start
  kb = 1024  # ru_maxrss is in KiB on Linux
  print(json.dumps({'seconds': seconds, 'counts': counts,
                    'max_rss_self': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb,
                    'max_rss_child': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kb}))


def _rss_check(folder, size_mb, eval_file):
  """The real command on one big JSONL file: peak RSS of its process tree."""
  path = os.path.join(folder, 'big.jsonl')
  with open(path, 'w') as f:
    for batch in _documents(1, size_mb * 2**20):
      f.write(''.join(json.dumps({'text': d}, ensure_ascii=False) + '\n' for d in batch))
  workdir = os.path.join(folder, 'rss_workdir')
  wrapper = ('import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); '
             'print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)')
  result, wall, tree = measured([sys.executable, '-c', wrapper, sys.executable, 'run.py',
                                 'prepare', '--config=configs/tiny.py', f'--workdir={workdir}',
                                 f'--config.data.train_files={path}',
                                 f'--config.data.eval_files={eval_file}'])
  row = {'jsonl_bytes': os.path.getsize(path), 'wall_s': round(wall, 1),
         'peak_tree_rss_mb': round(tree / 2**20), 'workers': os.cpu_count(),
         'max_process_rss_mb': round(int(result.stdout.split()[-1]) / 2**20)}
  shutil.rmtree(workdir, ignore_errors=True)
  os.remove(path)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size_mb', type=int, default=2048, help='document text per format')
  parser.add_argument('--files', type=int, default=4, help='files per format')
  parser.add_argument('--workers', default='1,2')
  parser.add_argument('--formats', default=','.join(FORMATS))
  parser.add_argument('--rss_jsonl_mb', type=int, default=0, help='also: run.py prepare on one '
                      'JSONL file of this size, peak RSS (0: skip)')
  parser.add_argument('--tmp', default=None, help='folder for the generated corpus')
  parser.add_argument('--out', default='')
  parser.add_argument('--run_one', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.run_one:
    return run_one(json.loads(args.run_one))
  folder = tempfile.mkdtemp(prefix='prepare-bench-', dir=args.tmp)
  try:
    start = time.perf_counter()
    corpora, docs, text_bytes = generate(folder, args.size_mb, args.files)
    eval_file = os.path.join(folder, 'eval.jsonl')
    with open(eval_file, 'w') as f:
      f.write(json.dumps({'text': 'a held-out document'}) + '\n')
    print(f'generated {docs} documents, {text_bytes / 2**20:.0f} MB of text per format, in '
          f'{time.perf_counter() - start:.0f}s', flush=True)
    disk = shutil.disk_usage(folder)
    rows = []
    for fmt in args.formats.split(','):
      directory, stored = corpora[fmt]
      for workers in [int(w) for w in args.workers.split(',')]:
        workdir = os.path.join(folder, f'workdir-{fmt}-{workers}')
        spec = {'train': directory, 'eval': eval_file, 'workers': workers, 'workdir': workdir}
        result, wall, tree = measured([sys.executable, os.path.abspath(__file__),
                                       f'--run_one={json.dumps(spec)}'])
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report['counts']['train'] == docs, (report['counts'], docs)
        rows.append({'format': fmt, 'workers': workers, 'stored_mb': round(stored / 2**20),
                     'seconds': round(report['seconds'], 2),
                     'text_mb_per_s': round(text_bytes / 2**20 / report['seconds'], 1),
                     'docs_per_s': round(docs / report['seconds']),
                     'peak_tree_rss_mb': round(tree / 2**20),
                     'max_process_rss_mb': round(max(report['max_rss_self'],
                                                     report['max_rss_child']) / 2**20),
                     'process_wall_s': round(wall, 2)})
        shutil.rmtree(workdir, ignore_errors=True)
        print(json.dumps(rows[-1]), flush=True)
    rss = _rss_check(folder, args.rss_jsonl_mb, eval_file) if args.rss_jsonl_mb else None
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  results = {'size_mb': args.size_mb, 'files_per_format': args.files, 'documents': docs,
             'text_bytes': text_bytes, 'cpu_count': os.cpu_count(), 'runs': rows,
             'rss_check': rss, 'tmp_free_gb_before': round(disk.free / 2**30, 1),
             'date': time.strftime('%Y-%m-%d')}
  out = args.out or os.path.join(REPO, 'bench', 'results',
                                 f'{results["date"]}-prepare-{args.size_mb}mb.json')
  with open(out, 'w') as f:
    json.dump(results, f, indent=1)
  print(f'\n{"format":<10} {"workers":>7} {"stored MB":>9} {"s":>7} {"text MB/s":>9} '
        f'{"docs/s":>8} {"tree RSS MB":>11} {"max proc MB":>11}')
  for r in rows:
    print(f'{r["format"]:<10} {r["workers"]:>7} {r["stored_mb"]:>9} {r["seconds"]:>7} '
          f'{r["text_mb_per_s"]:>9} {r["docs_per_s"]:>8} {r["peak_tree_rss_mb"]:>11} '
          f'{r["max_process_rss_mb"]:>11}')
  if rss:
    print(f'\nrun.py prepare, one {rss["jsonl_bytes"] / 2**20:.0f} MB JSONL file, '
          f'{rss["workers"]} workers: {rss["wall_s"]} s, peak RSS {rss["peak_tree_rss_mb"]} MB '
          f'(process tree), {rss["max_process_rss_mb"]} MB (largest process)')
  print(f'results: {out}')


if __name__ == '__main__':
  main()
