"""Session fixtures of the serving tests: one tiny model pretrained for 10 steps and
one `run.py serve` on it (127.0.0.1, a free port, stopped by its pid at the end).
Stdlib only at import time (conftest imports this before jax may be imported)."""
import json
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.cli_helpers import start_cli
from tests.cli_helpers import tiny_pretrain


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def get_json(url, timeout=10):
  with urllib.request.urlopen(url, timeout=timeout) as response:
    return json.loads(response.read() or b'null')


def start_server(workdir, *flags, log_path):
  """`run.py serve` on a free port; returns (process, base URL) once /health answers."""
  port = free_port()
  log = open(log_path, 'w')
  proc = start_cli('serve', '--config=configs/tiny.py', f'--workdir={workdir}',
                   '--host=127.0.0.1', f'--port={port}', *flags, stdout=log,
                   stderr=subprocess.STDOUT)
  url = f'http://127.0.0.1:{port}'
  deadline = time.time() + 300
  while True:
    if proc.poll() is not None:
      log.close()
      raise AssertionError(f'serve exited {proc.returncode}: {open(log_path).read()[-3000:]}')
    try:
      urllib.request.urlopen(url + '/health', timeout=2)
      return proc, url
    except OSError:
      assert time.time() < deadline, 'serve did not answer /health in 300 s'
      time.sleep(0.3)


def stop_server(proc):
  proc.send_signal(signal.SIGTERM)
  try:
    proc.wait(timeout=20)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


@pytest.fixture(scope='session')
def served_workdir(tiny_workdir, tmp_path_factory):
  """A tiny model pretrained for 10 steps: barely trained, so its greedy answers run
  long (good for batching and disconnect tests); its tokenizer has the chat tokens."""
  return str(tiny_pretrain(tiny_workdir, tmp_path_factory.mktemp('serve') / 'w'))


@pytest.fixture(scope='session')
def serve_url(served_workdir, tmp_path_factory):
  """Base URL of one server for every serving test; its log is in serve.log beside it."""
  log_path = str(tmp_path_factory.mktemp('serve_log') / 'serve.log')
  proc, url = start_server(served_workdir, log_path=log_path)
  yield url
  stop_server(proc)
  assert proc.returncode in (0, -signal.SIGTERM), open(log_path).read()[-3000:]
  with open(log_path) as f:
    assert 'compiled' in f.read()


def chat_body(content, **extra):
  return {'model': 'w', 'messages': [{'role': 'user', 'content': content}],
          'temperature': 0, **extra}
