"""Loads a checkpoint's params (and its model config) for eval, generate, export.

A damaged step (unreadable files, or arrays that differ from the fingerprints
saved with them) is skipped with a warning and the one before is used, as
training does on resume; when the user named the step, it is one error line.
"""
import json
import os
import sys

from absl import logging as absl_logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from configs.errors import UserError
from data_pipeline import tokenizer as tokenizer_lib
from engine import integrity
from engine import mesh as mesh_lib
from engine import train_state
from engine import paths
from jax.sharding import NamedSharding, PartitionSpec
from model import lora
from model import partitioning
from model import soft_prompt


def locate(workdir, checkpoint, step):
  """(checkpoints directory, step) from --checkpoint=PATH or --workdir [+ --step]."""
  if checkpoint:
    path = paths.resolve(checkpoint, '--checkpoint')
    name = os.path.basename(path.rstrip('/'))
    if not (name.isdigit() and paths.isdir(os.path.join(path, 'state'))):
      raise UserError(f'--checkpoint={checkpoint} is not a checkpoint step directory (like '
                      'WORKDIR/checkpoints/1000); give one that exists')
    if step is not None and step != int(name):
      raise UserError(f'--step={step} and --checkpoint={checkpoint} (step {name}) disagree; '
                      'give one of them')
    return os.path.dirname(path), int(name)
  directory = os.path.join(workdir, 'checkpoints')
  steps = all_steps(directory)
  if not steps:
    raise UserError(f'no checkpoint in {directory}; run `python run.py pretrain` first or give '
                    '--checkpoint')
  if step is not None and step not in steps:
    raise UserError(f'no checkpoint for --step={step}; available steps: {sorted(steps)}')
  if step is not None:
    return directory, step
  for candidate in sorted(steps, reverse=True):  # an unreadable metadata file: skip the step
    if _meta_readable(directory, candidate):
      return directory, candidate
    _warn(f'checkpoint {directory}/{candidate} has unreadable metadata; using the one before')
  raise UserError(f'every checkpoint in {directory} has unreadable metadata (damaged); '
                  'restore them from a backup or train again')


def all_steps(directory):
  if not paths.isdir(directory):
    return []
  manager = ocp.CheckpointManager(directory)
  try:
    return list(manager.all_steps())
  finally:
    manager.close()


def _meta_readable(directory, step):
  try:
    meta = json.loads(paths.read_text(os.path.join(directory, str(step), 'meta', 'metadata')))
    return isinstance(meta.get('config'), dict)
  except (OSError, ValueError, AttributeError):
    return False


_warned = set()


def _warn(message):
  if jax.process_index() == 0 and message not in _warned:
    _warned.add(message)
    print(f'warning: {message}', file=sys.stderr, flush=True)


def check_intact(directory, step):
  """Reads a step's params on the host and checks them against their fingerprints
  (integrity.DamagedCheckpoint if not): for choosing a checkpoint before the
  mesh that will hold it exists (--init_from)."""
  state_dir = os.path.join(directory, str(step), 'state')
  try:
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # 'no _CHECKPOINT_METADATA' is harmless
    try:
      tree = ocp.PyTreeCheckpointer().metadata(state_dir)
    finally:
      absl_logging.set_verbosity(level)
    tree = getattr(tree, 'item_metadata', tree)['params']
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
        item={'params': tree}, restore_args={'params': args}, partial_restore=True))
  except Exception as e:  # TensorStore/Orbax: truncated, missing or foreign array files
    raise integrity.DamagedCheckpoint(f'checkpoint {directory}/{step} cannot be read '
                                      f'({_first_line(e)})') from None
  integrity.verify(restored['params'], integrity.recorded(os.path.dirname(state_dir)),
                   f'checkpoint {directory}/{step}', prefix="['params']")


def with_fallback(workdir, checkpoint, step, fn):
  """fn(directory, step, meta) on the chosen checkpoint: the named one (--checkpoint
  or --step; damaged = one error line), else the latest that reads back intact
  (a damaged one is skipped with a warning)."""
  # Orbax needs absolute paths; run.py resolves them, a script calling this may not.
  workdir = paths.resolve(workdir) if workdir else workdir
  checkpoint = paths.resolve(checkpoint, '--checkpoint') if checkpoint else checkpoint
  directory, chosen = locate(workdir, checkpoint, step)
  named = checkpoint is not None or step is not None
  candidates = [chosen] if named else sorted(
      (s for s in all_steps(directory) if s <= chosen), reverse=True)
  for candidate in candidates:
    try:
      return fn(directory, candidate, read_meta(directory, candidate))
    except integrity.DamagedCheckpoint as e:
      if named:
        raise UserError(f'{e}; name another checkpoint, or the workdir alone (its latest '
                        'intact one is used)') from None
      _warn(f'{e}; using the checkpoint before it')
  raise UserError(f'no intact checkpoint in {directory} (each one is damaged; see the warnings '
                  'above); restore them from a backup or train again')


def read_meta(directory, step):
  manager = ocp.CheckpointManager(directory, item_names=('state', 'data', 'meta'))
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    if not isinstance(meta, dict) or not isinstance(meta.get('config'), dict):
      raise ValueError('no config in the metadata')
    return meta
  except Exception as e:  # Orbax raises many types for a damaged or emptied file
    raise integrity.DamagedCheckpoint(
        f'checkpoint {directory}/{step} has unreadable metadata '
        f'({_first_line(e)})') from None
  finally:
    manager.close()


def _first_line(e):
  line = (str(e).strip().splitlines() or [type(e).__name__])[0]
  if 'TensorStore' in line or 'array index' in line:  # its text runs on into repr noise
    line = 'an array file is truncated or unreadable: ' + line.split('. See full')[0][:120]
  return line[:200]


def restore_tree(state_dir, abstract, shardings):
  """Only the `params` item of a saved train state (no optimizer state), straight
  into the given shardings, checked against the fingerprints saved with it
  (integrity.DamagedCheckpoint when it cannot be read or differs)."""
  restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), shardings)
  step_dir = os.path.dirname(paths.resolve(state_dir, 'a checkpoint'))
  try:
    restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
        item={'params': abstract}, restore_args={'params': restore_args},
        partial_restore=True))
  except UserError:
    raise
  except Exception as e:  # TensorStore/Orbax: truncated, missing or foreign array files
    raise integrity.DamagedCheckpoint(f'checkpoint {step_dir} cannot be read '
                                      f'({_first_line(e)})') from None
  integrity.verify(restored['params'], integrity.recorded(step_dir), f'checkpoint {step_dir}',
                   prefix="['params']")
  return restored['params']


def restore_params_only(state_dir, spec):
  """The whole model's params."""
  return restore_tree(state_dir, jax.eval_shape(spec.init_params, jax.random.key(0)),
                      spec.param_shardings)


def fingerprint(directory, step):
  """Identifies one saved checkpoint (its metadata holds the save time and config), so an
  adapter checkpoint notices when its base was replaced by another run's step."""
  import hashlib
  return hashlib.sha256(paths.read_bytes(os.path.join(directory, str(step), 'meta',
                                                      'metadata'))).hexdigest()[:16]


def check_language_model(directory, step, meta):
  """A reward checkpoint is one line for the commands that need a language model."""
  if meta.get('stage') == 'reward':
    started = os.path.dirname((meta.get('base') or {}).get('directory', '').rstrip('/'))
    raise UserError(f'{directory}/{step} is a reward model: it scores text and has no '
                    'language-model head to sample from or export; score responses with '
                    '`run.py eval --workdir=<it> --score_file=FILE`, or use the language model '
                    f'it started from ({started or "its --init_from"})')


def model_params(directory, step, meta, spec):
  """(params the model runs with, soft prompt or None) of any stage's checkpoint.

  A LoRA checkpoint holds only adapters and names its base checkpoint: the base
  is loaded (recursively) and merged, W + scale·A·B. A prompt-tuning checkpoint
  holds the soft prompt; the model params are its base's.
  """
  check_language_model(directory, step, meta)
  state_dir = os.path.join(directory, str(step), 'state')
  part = meta.get('params_part')  # PPO: the trained tree is {'actor': ..., 'critic': ...}

  def restore(abstract, shardings):
    if part is None:
      return restore_tree(state_dir, abstract, shardings)
    return restore_tree(state_dir, {part: abstract}, {part: shardings})[part]

  adapter = meta.get('adapter')
  if adapter is None:
    return restore(jax.eval_shape(spec.init_params, jax.random.key(0)),
                   spec.param_shardings), None
  base = meta['base']
  if not paths.isdir(os.path.join(base['directory'], str(base['step']))):
    raise UserError(f'the base checkpoint {base["directory"]}/{base["step"]} of this '
                    f'{adapter} checkpoint is gone; restore it or fine-tune again')
  if base.get('fingerprint') not in (None, fingerprint(base['directory'], base['step'])):
    raise UserError(f'the base checkpoint {base["directory"]}/{base["step"]} of this {adapter} '
                    'checkpoint was replaced by another run; restore the original base')
  base_params, base_prompt = model_params(base['directory'], base['step'],
                                          read_meta(base['directory'], base['step']), spec)
  if adapter == 'lora':
    targets, rank = tuple(meta['lora']['targets']), meta['lora']['rank']
    abstract = jax.eval_shape(lambda: lora.init_adapters(jax.random.key(0), base_params,
                                                         targets, rank))
    adapters = restore(abstract, adapter_shardings(spec, targets))
    return lora.merge(base_params, adapters, meta['lora']['scale']), base_prompt
  abstract = jax.eval_shape(lambda: soft_prompt.init(
      jax.random.key(0), base_params['embed'], meta['prompt']['num_virtual'],
      meta['prompt']['reparam_hidden']))
  shardings = jax.tree.map(lambda a: NamedSharding(spec.mesh, PartitionSpec()), abstract)
  return base_params, soft_prompt.embeddings(restore(abstract, shardings))


def adapter_shardings(spec, targets):
  axes = lora.adapter_axes(spec.logical_axes, targets)
  return jax.tree.map(lambda a: NamedSharding(spec.mesh, partitioning.spec(a)), axes,
                      is_leaf=lambda x: isinstance(x, tuple))


def load(workdir, config, checkpoint=None, step=None):
  """(model config, params on the mesh, tokenizer, ModelSpec, saved config, step,
  soft prompt or None)."""
  return with_fallback(workdir, checkpoint, step,
                       lambda directory, step, meta: _load(workdir, config, directory, step,
                                                           meta))


def _load(workdir, config, directory, step, meta):
  saved = ml_collections.ConfigDict(meta['config'])
  tokenizer = tokenizer_lib.load_tokenizer(
      tokenizer_lib.tokenizer_path(workdir, config.tokenizer), saved.model.vocab_size)
  if meta.get('tokenizer_fingerprint') not in (None, tokenizer.fingerprint):
    raise UserError('the tokenizer in the workdir is not the one this checkpoint was trained '
                    'with; point tokenizer.path at the original')
  mesh = mesh_lib.make_mesh(config.mesh)
  spec = train_state.ModelSpec(saved.model, mesh)
  params, prompt = model_params(directory, step, meta, spec)
  return saved.model, params, tokenizer, spec, saved, step, prompt
