"""Runs run.py in a subprocess, as a user would."""
import os
import pathlib
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env=None, timeout=600, cwd=REPO):
  """Runs `python run.py ...` in a subprocess; returns CompletedProcess."""
  full_env = dict(os.environ)
  full_env.pop('XLA_FLAGS', None)  # the 8 simulated devices are for in-process mesh tests
  full_env.update(env or {})
  return subprocess.run([sys.executable, os.path.join(REPO, 'run.py'), *args], cwd=cwd,
                        env=full_env, capture_output=True, text=True, timeout=timeout)


def fresh_workdir(prepared_workdir, path):
  """A new workdir at `path` holding a copy of a prepared tokenizer and dataset."""
  os.makedirs(path)
  for part in ('tokenizer', 'tfds'):
    shutil.copytree(os.path.join(prepared_workdir, part), os.path.join(path, part))
  return pathlib.Path(path)


def tree_hashes(root):
  """{relative path: sha256} of every file under `root` (folders map to None): a
  workdir compared before and after a failing command must be unchanged."""
  import hashlib
  out = {}
  for directory, subdirs, names in os.walk(root):
    for name in subdirs:
      out[os.path.relpath(os.path.join(directory, name), root) + '/'] = None
    for name in names:
      path = os.path.join(directory, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out
