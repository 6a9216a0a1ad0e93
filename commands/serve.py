"""`run.py serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the
continuous-batching engine, with a chat page at GET /."""
import socket

from absl import flags

from commands import common
from configs.errors import UserError

READS_WORKDIR_ONLY = True  # a read-only workdir is fine
ON_STOP = 'the server stopped; start it again to serve'

CHECKPOINT, STEP = common.checkpoint_flags()
HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on (0.0.0.0: every '
                           'interface).')
PORT = flags.DEFINE_integer('port', 8000, 'TCP port to listen on.')
QUANTIZE = common.define('enum', 'quantize', 'none', ['none', 'int8'],
                         'int8 weight-only quantization of the linear layers.')


def check_port(host, port):
  """A port we cannot bind is one error line now, not a uvicorn traceback after the
  compile."""
  if not 0 < port < 65536:
    raise UserError(f'--port={port} must be in 1..65535')
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  with socket.socket(family, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind((host, port))
    except OSError as e:
      raise UserError(f'cannot listen on {host}:{port} ({e.strerror}); give another --port '
                      'or --host') from None


def main(config, workdir):
  import uvicorn
  from serving import api
  from serving import loader
  check_port(HOST.value, PORT.value)
  served = loader.load(config, workdir, step=STEP(), checkpoint=CHECKPOINT(),
                       quantize=QUANTIZE())
  served.engine.start()
  print(f'serve: {served.name} (step {served.step}, {served.stage}, quantize={served.quantize}) '
        f'on http://{HOST.value}:{PORT.value}  (chat page at /, API at /v1)', flush=True)
  try:
    uvicorn.run(api.create_app(served), host=HOST.value, port=PORT.value, log_level='warning',
                timeout_graceful_shutdown=2)
  finally:
    served.engine.stop()
