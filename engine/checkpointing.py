"""Orbax checkpoints: train state, per-process data-iterator state, metadata.

A step directory appears under WORKDIR/checkpoints/ only once every item is
written (Orbax finalises by atomic rename), so only complete checkpoints are
ever listed or restored.
"""
import json
import os
import subprocess
import time

from absl import logging
import grain
import orbax.checkpoint as ocp

from configs.errors import ResumeConflict
from configs.errors import UserError
from engine import paths

# Fields that change the function or the shapes of the parameters. Anything else
# (dtype, attention kernel, remat, steps, logging) may change on resume.
ARCHITECTURE_FIELDS = ('num_layers', 'd_model', 'num_heads', 'num_kv_heads', 'head_dim',
                       'mlp_dim', 'vocab_size', 'tie_embeddings', 'rope_theta', 'norm_eps')


class _FrozenIteratorState:
  """The iterator state captured at save time; the async writer may run later,
  when the live iterator has already moved on."""

  def __init__(self, state):
    self._state = json.dumps(state).encode()

  def get_state(self):
    return self._state


class _StateReceiver:
  def set_state(self, state):
    self.state = json.loads(state.decode())

  def start_prefetch(self):
    pass


def make_manager(workdir, ckpt_cfg):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=ckpt_cfg.keep,
      keep_period=ckpt_cfg.keep_period or None,
      enable_async_checkpointing=ckpt_cfg.async_save,
      # Step directories made in the caller's thread: a read-only or full disk fails
      # there at once (made in the background, the caller waited out a 5-minute
      # signal timeout), and every wait on the storage is bounded by timeout_s.
      async_options=ocp.AsyncOptions(timeout_secs=int(ckpt_cfg.get('timeout_s', 600)),
                                     create_directories_asynchronously=False),
      create=True)
  return ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), options=options,
                               item_names=('state', 'data', 'meta'))


def git_commit():
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def metadata(config, tokenizer, mesh):
  return {'config': json.loads(config.to_json()), 'tokenizer_fingerprint': tokenizer.fingerprint,
          'git_commit': git_commit(), 'wall_time': time.time(),
          'mesh': dict(mesh.shape)}


def save(manager, step, state, iterator_state, meta, force=False):
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(_FrozenIteratorState(iterator_state)),
      meta=ocp.args.JsonSave(meta)), force=force)


def restore(manager, step, abstract_state):
  """(state, this process's iterator state or None, metadata)."""
  receiver = _StateReceiver()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(receiver),
        meta=ocp.args.JsonRestore()))
    return restored['state'], receiver.state, restored['meta']
  except ValueError as e:
    if 'process_' not in str(e):
      raise
  # Written by a different number of processes: params restore fine, and the
  # data state is gathered from every process's file (all see the same files).
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored['state'], _all_process_data_states(manager, step), restored['meta']


def _all_process_data_states(manager, step):
  directory = os.path.join(str(manager.directory), str(step), 'data')
  shards = {}
  for name in sorted(paths.listdir(directory)):
    if name.startswith('process_') and name.endswith('.json'):
      shards.update(json.loads(paths.read_text(os.path.join(directory, name))).get('shards', {}))
  return {'shards': shards} if shards else None


def check_stage(meta, stage):
  """A workdir's checkpoints resume only in the stage that wrote them."""
  saved_stage = meta.get('stage') or 'pretrain'
  if saved_stage != stage:
    raise ResumeConflict(f'this workdir holds {saved_stage} checkpoints (from `run.py '
                         f'{saved_stage}`), which {stage} cannot resume',
                         f'give {stage} a new --workdir')


def check_workdir_stage(workdir, stage):
  """check_stage on the workdir's latest checkpoint, before a stage loads its data; a
  workdir without (readable) checkpoints passes, the trainer reports what it finds."""
  from engine import restore_params
  try:
    directory, step = restore_params.locate(workdir, None, None)
    meta = restore_params.read_meta(directory, step)
  except UserError:
    return
  check_stage(meta, stage)


def check_compatible(meta, config, tokenizer, stage='pretrain'):
  check_stage(meta, stage)
  saved = meta['config']['model']
  for field in ARCHITECTURE_FIELDS:
    if saved.get(field) != config.model[field]:
      raise ResumeConflict(f'model.{field}={config.model[field]} but the checkpoint was '
                           f'trained with {saved.get(field)}',
                           'use the checkpoint\'s value, a new workdir, or --noresume')
  # The optimizer state's structure follows the optimizer (checkpoints from before
  # train.optimizer existed are AdamW's).
  saved_optimizer = meta['config'].get('train', {}).get('optimizer', 'adamw')
  if saved_optimizer != config.train.optimizer:
    raise ResumeConflict(f'train.optimizer={config.train.optimizer} but the checkpoint was '
                         f'trained with {saved_optimizer}',
                         'use the checkpoint\'s value, a new workdir, or --noresume')
  if meta.get('tokenizer_fingerprint') not in (None, tokenizer.fingerprint):
    raise ResumeConflict('the tokenizer differs from the one the checkpoint was trained with',
                         'restore the original tokenizer or use a new workdir')
  changed = [f'{section}.{key}: {meta["config"][section][key]!r} -> {config[section][key]!r}'
             for section in ('train', 'data', 'checkpoint', 'model')
             for key in config[section]
             if key in meta['config'].get(section, {})
             and meta['config'][section][key] != _plain(config[section][key])]
  for change in changed:
    logging.warning('resume with a changed setting: %s', change)
  return changed


def _plain(value):
  return list(value) if isinstance(value, tuple) else value
