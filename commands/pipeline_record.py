"""WORKDIR/pipeline.json: which stages finished, with what config, in how long.

A finished stage is skipped when the pipeline runs again, but only if the keys
that shape its result (and those of the stages it starts from) are unchanged;
otherwise the run stops before any work with a line naming the changed keys.
Keys that only change logging, evaluation cadence, checkpointing, the mesh or the
microbatches (the same update up to summation order, as across meshes) never count:
a resumed run may change them.
"""
import copy
import hashlib
import json
import os
import subprocess

from configs.errors import UserError
from engine import paths

FILE = 'pipeline.json'
# The config sections whose values shape each stage's result.
SECTIONS = {
    'tokenizer': ('data', 'tokenizer'),
    'prepare': ('data', 'tokenizer'),
    'pretrain': ('seed', 'data', 'tokenizer', 'model', 'train'),
    'sft': ('seed', 'data', 'train', 'sft'),
    'reward': ('seed', 'data', 'train', 'sft', 'reward'),
    'dpo': ('seed', 'data', 'train', 'sft', 'dpo'),
    'ppo': ('seed', 'data', 'train', 'sft', 'ppo'),
    'grpo': ('seed', 'data', 'train', 'sft', 'grpo'),
}
IGNORED = ('train.log_every', 'train.eval_every', 'train.eval_batches', 'train.stop_after',
           'train.peak_tflops', 'train.microbatches', 'data.num_threads', 'data.prefetch',
           'sft.eval_prompts', 'sft.max_new_tokens')


def _flat(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return out


def shaping_keys(stage, stage_config):
  """The dotted keys and values of `stage_config` that shape `stage`'s result."""
  tree = stage_config if isinstance(stage_config, dict) else json.loads(stage_config.to_json())
  keys = _flat({s: tree[s] for s in SECTIONS.get(stage, ()) if s in tree})
  return {k: v for k, v in keys.items() if k not in IGNORED and not _unread(stage, k, keys)}


def _unread(stage, key, keys):
  """Keys the stage's method never reads: the adapters' shape under full fine-tuning, the
  soft prompt's unless SFT tunes one (changing them changes nothing)."""
  if key.startswith('sft.lora_'):
    return keys.get(f'{stage}.method', keys.get('sft.method')) != 'lora'
  if key in ('sft.num_virtual_tokens', 'sft.prompt_reparam_hidden'):
    return keys.get('sft.method') != 'prompt'
  return False


def differing(old, new):
  """The keys both records have whose values differ: keys the code added or stopped
  counting since `old` was written are not a change the user made."""
  return sorted(k for k in set(old) & set(new) if old[k] != new[k])


def digest(keys, upstream_digests):
  text = json.dumps([keys, sorted(upstream_digests)], sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def commit():
  """The code's git commit (with '+changes' when the tree differs), or None."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], cwd=here, text=True,
                          capture_output=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                           text=True, capture_output=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ('+changes' if dirty else '')


class Record:
  """The pipeline.json of one workdir; every write replaces the file atomically."""

  def __init__(self, workdir, writer=True):
    self.path = os.path.join(workdir, FILE)
    self.workdir_existed = paths.exists(workdir)
    self.writer = writer
    self.data = {'stages': {}}
    if paths.exists(self.path):
      try:
        self.data = json.loads(paths.read_text(self.path))
        self.data.setdefault('stages', {})
      except (OSError, ValueError) as e:
        raise UserError(f'{self.path} is unreadable ({e}); restore it, or delete it and the '
                        'stage folders to start the pipeline again') from None

  def stage(self, name):
    return self.data['stages'].get(name)

  def update(self, name, **fields):
    entry = self.data['stages'].setdefault(name, {})
    if fields.get('status') not in (None, 'failed'):
      entry.pop('error', None)  # an earlier failure's message no longer describes the stage
    entry.update(fields)
    self.save()

  def snapshot(self):
    """What restore() goes back to: the file as it is now (None: there is none)."""
    return copy.deepcopy(self.data) if paths.exists(self.path) else None

  def restore(self, snapshot):
    """A stage that stopped on a user's mistake before any work leaves no trace."""
    if not self.writer:
      return
    if snapshot is None:
      self.data = {'stages': {}}
      if paths.exists(self.path):
        paths.remove(self.path)
      folder = os.path.dirname(self.path)
      if not self.workdir_existed and not paths.is_remote(folder):
        try:
          os.rmdir(folder)  # only if empty: the record made it, nothing else is in it
        except OSError:
          pass
      return
    self.data = snapshot
    self.save()

  def save(self):
    if not self.writer:
      return
    paths.write_atomic(self.path, json.dumps(self.data, indent=1, ensure_ascii=False))


def changed_keys(old, new, limit=3, order=None):
  """'a.b 1 -> 2, ...' for the keys whose values differ (sorted, or in `order`)."""
  names = [k for k in (order or sorted(set(old) | set(new))) if old.get(k) != new.get(k)]
  text = ', '.join(f'{k} {old.get(k)!r} -> {new.get(k)!r}' for k in names[:limit])
  return text + (f' and {len(names) - limit} more' if len(names) > limit else '')
