"""`run.py chat` driven through a pseudo-terminal, as a person would: multi-turn
greedy answers equal the API's, /system, /temperature, /reset, Ctrl-C stops an
answer and the chat goes on, Ctrl-D quits."""
import os
import pty
import select
import subprocess
import sys
import time

import httpx
import pytest

from tests.cli_helpers import REPO

pytestmark = pytest.mark.slow


TAKE_TERMINAL = ('import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); '
                 'os.execv(sys.executable, [sys.executable] + sys.argv[1:])')


class Terminal:
  """`run.py chat` on a pty; `until(text)` reads until text appears (or fails)."""

  def __init__(self, *args):
    env = dict(os.environ)
    env.pop('XLA_FLAGS', None)
    self.fd, child = pty.openpty()
    # subprocess's own fork+exec (pty.fork from this multithreaded process could deadlock);
    # the new session takes the pty as its controlling terminal, so Ctrl-C is SIGINT there
    self.proc = subprocess.Popen(
        [sys.executable, '-c', TAKE_TERMINAL, 'run.py', 'chat', *args], cwd=REPO, env=env,
        stdin=child, stdout=child, stderr=child, start_new_session=True)
    os.close(child)
    self.seen = ''
    self._raw = b''

  def until(self, text, timeout=180):
    deadline = time.time() + timeout  # a bound for a hung program, not a speed check
    start = len(self.seen)
    while text not in self.seen[start:]:
      assert time.time() < deadline, f'no {text!r} in {self.seen[-2000:]!r}'
      ready, _, _ = select.select([self.fd], [], [], 0.1)
      if ready:
        try:
          self._raw += os.read(self.fd, 4096)
        except OSError:  # the program exited
          assert text in self.seen[start:], f'exited before {text!r}: {self.seen[-2000:]!r}'
        self.seen = self._raw.decode('utf-8', errors='replace').replace('\r\n', '\n')
    end = self.seen.index(text, start) + len(text)
    return self.seen[start:end]

  def send(self, text):
    os.write(self.fd, text.encode('utf-8'))

  def close(self):
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()
    os.close(self.fd)


def _api(serve_url, messages):
  """The server's greedy answer, with the chat's limit: 200 tokens or the room left."""
  count = httpx.post(serve_url + '/tokenize', json={'messages': messages}).json()['count']
  return httpx.post(serve_url + '/v1/chat/completions', json={
      'messages': messages, 'temperature': 0, 'max_tokens': min(200, 256 - count)}).json()[
          'choices'][0]['message']['content']


def test_chat_in_a_terminal(served_workdir, serve_url):
  term = Terminal('--config=configs/tiny.py', f'--workdir={served_workdir}',
                  '--temperature=0', '--config.serve.default_max_tokens=200')
  try:
    term.until('Ctrl-D quits\n> ')
    history = []
    for question in ('你好，请介绍一下你自己。', 'And in English?'):
      term.send(question + '\n')
      echoed = term.until(question + '\n')
      assert echoed.endswith(question + '\n')
      shown = term.until('\n> ')[:-3].replace(' [length limit]', '')
      history.append({'role': 'user', 'content': question})
      assert shown == _api(serve_url, history)
      history.append({'role': 'assistant', 'content': shown})
    term.send('/temperature hot\n')
    term.until('[/temperature takes a number')
    term.send('/system Answer briefly.\n')
    term.until("[system prompt: 'Answer briefly.']")
    term.send('/reset\n')
    term.until('[conversation reset]\n> ')
    term.send('Hello\n')
    term.until('Hello\n')
    shown = term.until('\n> ')[:-3].replace(' [length limit]', '')
    assert shown == _api(serve_url, [{'role': 'system', 'content': 'Answer briefly.'},
                                     {'role': 'user', 'content': 'Hello'}])
    # Ctrl-C while an answer streams: it stops there, and the chat goes on. The answer
    # may finish before the key arrives; then try again (a few times at most).
    term.send('/temperature 1.5\n/reset\n')
    term.until('[conversation reset]\n> ')
    stopped = False
    for _ in range(5):
      term.send('Tell me a story.\n')
      term.until('Tell me a story.\n')
      select.select([term.fd], [], [], 60)  # the answer has begun
      term.send('\x03')
      rest = term.until('\n> ')
      if '[stopped]' in rest:
        stopped = True
        break
    assert stopped, term.seen[-2000:]
    term.send('hi\n')
    term.until('hi\n')
    term.until('\n> ')
    term.send('\x04')
    term.until('[bye]')
    assert term.proc.wait(timeout=60) == 0
  finally:
    term.close()
