"""Load on `run.py serve`: N concurrent streaming clients × M requests each, against
the same requests sent one at a time.

  python bench/serve_load.py --workdir=runs/tiny/sft --clients=16 --requests=4

Starts the server itself (127.0.0.1, a free port; stopped by its pid at the end).
Every request is a greedy chat completion with `ignore_eos` and a fixed max_tokens,
so both phases generate the same number of tokens. Reports aggregate output tokens/s,
time to first token and per-token latency (p50/p95) per phase, the speed-up, and the
engine's compile time; `--json=PATH` writes them."""
import argparse
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import httpx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = ['你好，请介绍一下你自己。', 'What is your favorite book?', '成语“画蛇添足”是什么意思？',
             'Give a short definition of the noun "river".', '李白《静夜思》的下一句是什么？',
             'Who said this? "Art is a jealous mistress."', 'Tell me a story.', '今天天气怎么样？']


def start_server(workdir, config, extra):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'run.py'), 'serve',
                           f'--config={config}', f'--workdir={workdir}', '--host=127.0.0.1',
                           f'--port={port}', *extra], cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  url = f'http://127.0.0.1:{port}'
  while True:
    if proc.poll() is not None:
      sys.exit(f'error: serve exited with {proc.returncode}; run it by hand to see why')
    try:
      urllib.request.urlopen(url + '/health', timeout=2)
      return proc, url
    except OSError:
      time.sleep(0.3)


def one_request(client, url, question, max_tokens):
  """(time to first token, seconds per later token, output tokens) of one stream."""
  body = {'messages': [{'role': 'user', 'content': question}], 'temperature': 0,
          'max_tokens': max_tokens, 'ignore_eos': True, 'stream': True,
          'stream_options': {'include_usage': True}}
  start, first, last, tokens = time.perf_counter(), None, None, 0
  with client.stream('POST', url + '/v1/chat/completions', json=body, timeout=600) as response:
    for line in response.iter_lines():
      if not line.startswith('data: ') or line == 'data: [DONE]':
        continue
      chunk = json.loads(line[6:])
      if chunk.get('usage'):
        tokens = chunk['usage']['completion_tokens']
      elif chunk['choices'] and chunk['choices'][0]['delta'].get('content'):
        now = time.perf_counter()
        first = first or now
        last = now
  per_token = (last - first) / max(tokens - 1, 1) if first else 0.0
  return (first or time.perf_counter()) - start, per_token, tokens


def percentile(values, q):
  values = sorted(values)
  return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def phase(url, clients, requests, max_tokens):
  jobs = [QUESTIONS[(c * requests + r) % len(QUESTIONS)] + f' ({c}.{r})'
          for c in range(clients) for r in range(requests)]
  def client_run(c):
    with httpx.Client() as client:
      return [one_request(client, url, q, max_tokens)
              for q in jobs[c * requests:(c + 1) * requests]]
  begin = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    results = [r for rs in pool.map(client_run, range(clients)) for r in rs]
  wall = time.perf_counter() - begin
  ttft, per_token, tokens = zip(*results)
  return {'clients': clients, 'requests': len(results), 'output_tokens': sum(tokens),
          'seconds': wall, 'tokens_per_s': sum(tokens) / wall,
          'ttft_p50_ms': 1e3 * percentile(ttft, 50), 'ttft_p95_ms': 1e3 * percentile(ttft, 95),
          'per_token_p50_ms': 1e3 * percentile(per_token, 50),
          'per_token_p95_ms': 1e3 * percentile(per_token, 95)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--config', default='configs/base.py')
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--requests', type=int, default=4, help='per client')
  parser.add_argument('--max_tokens', type=int, default=64)
  parser.add_argument('--serial_requests', type=int, default=16,
                      help='requests of the one-at-a-time phase')
  parser.add_argument('--json', default=None)
  parser.add_argument('serve_flags', nargs='*', help='extra flags for run.py serve')
  args = parser.parse_args()
  proc, url = start_server(args.workdir, args.config,
                           [f'--config.serve.max_batch={max(args.clients, 1)}',
                            *args.serve_flags])
  try:
    stats = json.loads(urllib.request.urlopen(url + '/stats').read())
    phase(url, 1, 1, 4)  # first requests through the HTTP stack: not measured
    batched = phase(url, args.clients, args.requests, args.max_tokens)
    serial = phase(url, 1, args.serial_requests, args.max_tokens)
  finally:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
  result = {'workdir': args.workdir, 'max_tokens': args.max_tokens,
            'compile_seconds': stats['compile_seconds'], 'prefill_buckets':
            stats['prefill_buckets'], 'batched': batched, 'one_at_a_time': serial,
            'speedup': batched['tokens_per_s'] / serial['tokens_per_s']}
  print(f'compile {result["compile_seconds"]:.1f} s ({len(result["prefill_buckets"])} prefill '
        f'buckets + decode step)')
  print(f'{"":<16}{"tokens/s":>10}{"TTFT p50":>10}{"p95":>8}{"ms/token p50":>14}{"p95":>8}')
  for name, r in (('batched', batched), ('one at a time', serial)):
    print(f'{name:<16}{r["tokens_per_s"]:>10.1f}{r["ttft_p50_ms"]:>10.0f}{r["ttft_p95_ms"]:>8.0f}'
          f'{r["per_token_p50_ms"]:>14.1f}{r["per_token_p95_ms"]:>8.1f}')
  print(f'speed-up {result["speedup"]:.1f}x with {args.clients} clients')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
