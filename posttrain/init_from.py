"""`--init_from=P`: the model a post-training stage starts from.

P is a workdir (its latest checkpoint: pretrain, import, or an earlier
post-training stage) or one checkpoint step directory. Its tokenizer and
architecture must be the ones this run is configured with.
"""
import dataclasses
import os

import ml_collections

from configs.errors import UserError
from data_pipeline import tokenizer as tokenizer_lib
from engine import checkpointing
from engine import restore_params
from engine import paths


@dataclasses.dataclass
class InitFrom:
  directory: str  # the checkpoints directory
  step: int
  meta: dict
  workdir: str  # the workdir P belongs to (its tokenizer/, tfds/)
  tokenizer: tokenizer_lib.Tokenizer

  @property
  def saved(self):
    return ml_collections.ConfigDict(self.meta['config'])


def resolve(init_from):
  if not init_from:
    raise UserError('--init_from is required: a pretraining workdir or a checkpoint step '
                    'directory to start from')
  path = paths.resolve(init_from, '--init_from')
  if not paths.exists(path):
    raise UserError(f'--init_from={init_from} does not exist; give a workdir with checkpoints '
                    'or a checkpoint step directory')
  if os.path.basename(path).isdigit() and paths.isdir(os.path.join(path, 'state')):
    checkpoint, workdir = path, os.path.dirname(os.path.dirname(path))
  elif paths.isdir(os.path.join(path, 'checkpoints')):
    checkpoint, workdir = None, path
  else:
    raise UserError(f'--init_from={init_from} is not a workdir with checkpoints/ nor a '
                    'checkpoint step directory; give one')

  def intact(directory, step, meta):  # a damaged latest step: the one before, with a warning
    restore_params.check_intact(directory, step)
    return directory, step, meta
  try:
    directory, step, meta = restore_params.with_fallback(workdir, checkpoint, None, intact)
  except UserError as e:
    raise UserError(f'--init_from: {e}') from None
  saved = ml_collections.ConfigDict(meta['config'])
  tok_path = saved.tokenizer.get('path') or os.path.join(workdir, 'tokenizer',
                                                         tokenizer_lib.MODEL_FILE)
  tokenizer = tokenizer_lib.load_tokenizer(tok_path)
  if meta.get('tokenizer_fingerprint') not in (None, tokenizer.fingerprint):
    raise UserError(f'--init_from: the tokenizer at {tok_path} is not the one checkpoint '
                    f'{step} was trained with; restore the original')
  return InitFrom(directory, step, meta, workdir, tokenizer)


def check_matches(init, config, workdir):
  """The run's architecture and tokenizer must be the init checkpoint's."""
  saved = init.saved.model
  for field in checkpointing.ARCHITECTURE_FIELDS:
    if saved.get(field) != config.model[field]:
      raise UserError(f'model.{field}={config.model[field]} but --init_from was trained with '
                      f'{saved.get(field)}; use the same model preset as the init checkpoint')
  own = tokenizer_lib.tokenizer_path(workdir, config.tokenizer)
  if paths.isfile(own):
    tokenizer = tokenizer_lib.load_tokenizer(own)
    if tokenizer.fingerprint != init.tokenizer.fingerprint:
      raise UserError(f'the tokenizer at {own} differs from the one --init_from was trained '
                      'with; use a new workdir or the same tokenizer')


def copy_tokenizer(init, workdir):
  """The stage's workdir gets the tokenizer it was trained with (eval/generate use it)."""
  target = os.path.join(workdir, 'tokenizer')
  if not paths.isfile(os.path.join(target, tokenizer_lib.MODEL_FILE)):
    tokenizer_lib.save_tokenizer(init.tokenizer, target)
