"""Loads a checkpoint's params (and its model config) for eval, generate, export."""
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from configs.errors import UserError
from data_pipeline import tokenizer as tokenizer_lib
from engine import mesh as mesh_lib
from engine import train_state
from jax.sharding import NamedSharding, PartitionSpec
from model import lora
from model import partitioning
from model import soft_prompt


def locate(workdir, checkpoint, step):
  """(checkpoints directory, step) from --checkpoint=PATH or --workdir [+ --step]."""
  if checkpoint:
    path = os.path.abspath(checkpoint)
    name = os.path.basename(path.rstrip('/'))
    if not (os.path.isdir(os.path.join(path, 'state')) and name.isdigit()):
      raise UserError(f'--checkpoint={checkpoint} is not a checkpoint step directory (like '
                      'WORKDIR/checkpoints/1000); give one that exists')
    return os.path.dirname(path), int(name)
  directory = os.path.join(workdir, 'checkpoints')
  steps = []
  if os.path.isdir(directory):
    manager = ocp.CheckpointManager(directory)
    steps = list(manager.all_steps())
    manager.close()
  if not steps:
    raise UserError(f'no checkpoint in {directory}; run `python run.py pretrain` first or give '
                    '--checkpoint')
  if step is not None and step not in steps:
    raise UserError(f'no checkpoint for --step={step}; available steps: {sorted(steps)}')
  return directory, step if step is not None else max(steps)


def read_meta(directory, step):
  manager = ocp.CheckpointManager(directory, item_names=('state', 'data', 'meta'))
  try:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  finally:
    manager.close()


def restore_tree(state_dir, abstract, shardings):
  """Only the `params` item of a saved train state (no optimizer state), straight
  into the given shardings."""
  restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), shardings)
  restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item={'params': abstract}, restore_args={'params': restore_args}, partial_restore=True))
  return restored['params']


def restore_params_only(state_dir, spec):
  """The whole model's params."""
  return restore_tree(state_dir, jax.eval_shape(spec.init_params, jax.random.key(0)),
                      spec.param_shardings)


def fingerprint(directory, step):
  """Identifies one saved checkpoint (its metadata holds the save time and config), so an
  adapter checkpoint notices when its base was replaced by another run's step."""
  import hashlib
  with open(os.path.join(directory, str(step), 'meta', 'metadata'), 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def model_params(directory, step, meta, spec):
  """(params the model runs with, soft prompt or None) of any stage's checkpoint.

  A LoRA checkpoint holds only adapters and names its base checkpoint: the base
  is loaded (recursively) and merged, W + scale·A·B. A prompt-tuning checkpoint
  holds the soft prompt; the model params are its base's.
  """
  state_dir = os.path.join(directory, str(step), 'state')
  adapter = meta.get('adapter')
  if adapter is None:
    return restore_params_only(state_dir, spec), None
  base = meta['base']
  if not os.path.isdir(os.path.join(base['directory'], str(base['step']))):
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
    adapters = restore_tree(state_dir, abstract, adapter_shardings(spec, targets))
    return lora.merge(base_params, adapters, meta['lora']['scale']), base_prompt
  abstract = jax.eval_shape(lambda: soft_prompt.init(
      jax.random.key(0), base_params['embed'], meta['prompt']['num_virtual'],
      meta['prompt']['reparam_hidden']))
  shardings = jax.tree.map(lambda a: NamedSharding(spec.mesh, PartitionSpec()), abstract)
  return base_params, soft_prompt.embeddings(restore_tree(state_dir, abstract, shardings))


def adapter_shardings(spec, targets):
  axes = lora.adapter_axes(spec.logical_axes, targets)
  return jax.tree.map(lambda a: NamedSharding(spec.mesh, partitioning.spec(a)), axes,
                      is_leaf=lambda x: isinstance(x, tuple))


def load(workdir, config, checkpoint=None, step=None):
  """(model config, params on the mesh, tokenizer, ModelSpec, saved config, step,
  soft prompt or None)."""
  directory, step = locate(workdir, checkpoint, step)
  meta = read_meta(directory, step)
  saved = ml_collections.ConfigDict(meta['config'])
  tokenizer = tokenizer_lib.load_tokenizer(
      tokenizer_lib.tokenizer_path(workdir, config.tokenizer), saved.model.vocab_size)
  if meta.get('tokenizer_fingerprint') not in (None, tokenizer.fingerprint):
    raise UserError('the tokenizer in the workdir is not the one this checkpoint was trained '
                    'with; point tokenizer.path at the original')
  mesh = mesh_lib.make_mesh(config.mesh)
  spec = train_state.ModelSpec(saved.model, mesh)
  try:
    params, prompt = model_params(directory, step, meta, spec)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise UserError(f'checkpoint {directory}/{step} cannot be read for its own model config '
                    f'({str(e).splitlines()[0][:200]}); the checkpoint is damaged') from None
  return saved.model, params, tokenizer, spec, saved, step, prompt
