"""`run.py launch --num_processes=N [--devices_per_process=D] -- <command ...>`.

Starts N local processes of `run.py <command ...>` wired together on loopback
(process i gets --process_id=i), each with D simulated CPU devices, and streams
their output prefixed with [p0]…[pN-1]. If any process fails, the others are
stopped and the launcher exits with that process's code. SIGTERM/SIGINT are
forwarded to every process (training then checkpoints the same step everywhere).
"""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from configs.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _stream(proc, prefix, lock):
  for line in proc.stdout:
    with lock:
      sys.stdout.write(f'{prefix} {line}')
      sys.stdout.flush()


def _child_env(devices_per_process):
  env = dict(os.environ)
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', env.get('XLA_FLAGS', ''))
  if devices_per_process:
    flags += f' --xla_force_host_platform_device_count={devices_per_process}'
  env['XLA_FLAGS'] = flags.strip()
  env['PYTHONUNBUFFERED'] = '1'
  return env


def _reason(code):
  return f'signal {-code}' if code < 0 else f'exit code {code}'


def launch(num_processes, devices_per_process, command_args):
  if num_processes < 1:
    raise UserError(f'--num_processes={num_processes} must be >= 1')
  if not command_args:
    raise UserError('give the command after --, e.g. `run.py launch --num_processes=2 -- '
                    'pretrain --config=configs/tiny.py --workdir=runs/x`')
  address = f'127.0.0.1:{free_port()}'
  env = _child_env(devices_per_process)
  lock = threading.Lock()
  procs, threads = [], []
  for i in range(num_processes):
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'run.py'), *command_args,
         f'--coordinator_address={address}', f'--num_processes={num_processes}',
         f'--process_id={i}'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=os.getcwd())
    procs.append(proc)
    thread = threading.Thread(target=_stream, args=(proc, f'[p{i}]', lock), daemon=True)
    thread.start()
    threads.append(thread)

  def forward(signum, _):
    for proc in procs:
      if proc.poll() is None:
        proc.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  failed = None
  while any(p.poll() is None for p in procs):
    for i, proc in enumerate(procs):
      code = proc.poll()
      if code not in (None, 0) and failed is None:
        failed = (i, code)
        print(f'launch: process {i} failed ({_reason(code)}); stopping the other processes',
              file=sys.stderr, flush=True)
        # SIGKILL, not SIGTERM: a graceful stop needs every process in the final
        # collectives, and one is gone; the last complete checkpoint stays valid.
        for other in procs:
          if other.poll() is None:
            other.kill()
    time.sleep(0.1)
  for thread in threads:
    thread.join(timeout=5)
  if failed is None:
    failed = next(((i, p.returncode) for i, p in enumerate(procs) if p.returncode), None)
    if failed:
      print(f'launch: process {failed[0]} failed ({_reason(failed[1])})', file=sys.stderr,
            flush=True)
  if failed:
    code = failed[1]
    return code if code > 0 else 1
  return 0
