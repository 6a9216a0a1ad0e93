"""Loads a checkpoint's params (and its model config) for eval and generation."""
import os

import ml_collections
import orbax.checkpoint as ocp

from configs.errors import UserError
from data_pipeline import tokenizer as tokenizer_lib
from pretrain import checkpointing
from pretrain import mesh as mesh_lib
from pretrain import optimizer
from pretrain import train_state


def _locate(workdir, checkpoint, step):
  """(checkpoints directory, step) from --checkpoint=PATH or --workdir [+ --step]."""
  if checkpoint:
    path = os.path.abspath(checkpoint)
    name = os.path.basename(path.rstrip('/'))
    if not (os.path.isdir(os.path.join(path, 'state')) and name.isdigit()):
      raise UserError(f'--checkpoint={checkpoint} is not a checkpoint step directory (like '
                      'WORKDIR/checkpoints/1000); give one that exists')
    return os.path.dirname(path), int(name)
  directory = os.path.join(workdir, 'checkpoints')
  steps = ocp.CheckpointManager(directory).all_steps() if os.path.isdir(directory) else []
  if not steps:
    raise UserError(f'no checkpoint in {directory}; run `python run.py pretrain` first or give '
                    '--checkpoint')
  if step is not None and step not in steps:
    raise UserError(f'no checkpoint for --step={step}; available steps: {sorted(steps)}')
  return directory, step if step is not None else max(steps)


def load(workdir, config, checkpoint=None, step=None, mesh_config=None):
  """(model config, params on the mesh, tokenizer, ModelSpec, saved config, step)."""
  directory, step = _locate(workdir, checkpoint, step)
  manager = ocp.CheckpointManager(directory, item_names=('state', 'data', 'meta'))
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  saved = ml_collections.ConfigDict(meta['config'])
  tokenizer = tokenizer_lib.load_tokenizer(
      tokenizer_lib.tokenizer_path(workdir, config.tokenizer), saved.model.vocab_size)
  if meta.get('tokenizer_fingerprint') not in (None, tokenizer.fingerprint):
    raise UserError('the tokenizer in the workdir is not the one this checkpoint was trained '
                    'with; point tokenizer.path at the original')
  mesh = mesh_lib.make_mesh(mesh_config or config.mesh)
  spec = train_state.ModelSpec(saved.model, mesh)
  abstract, _ = train_state.abstract_train_state(spec, optimizer.make_optimizer(saved.train))
  try:
    state, _, _ = checkpointing.restore(manager, step, abstract)
  except (ValueError, KeyError) as e:
    raise UserError(f'checkpoint {directory}/{step} does not match its own model config '
                    f'({str(e).splitlines()[0][:200]}); the checkpoint is damaged') from None
  finally:
    manager.close()  # stops Orbax's background loop before the interpreter exits
  return saved.model, state['params'], tokenizer, spec, saved, step
