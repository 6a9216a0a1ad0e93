"""Loads a reward model checkpoint (transformer + scalar head) for eval and PPO.

Its params tree is {'lm': model params or LoRA adapters, 'head': {'w', 'b'}};
a LoRA reward model is merged onto its base here, so callers see full params.
"""
import os

import jax
import ml_collections

from configs.errors import UserError
from data_pipeline import tokenizer as tokenizer_lib
from engine import mesh as mesh_lib
from engine import restore_params
from engine import train_state
from engine import paths
from model import lora
from model import scalar_head


def reward_params(directory, step, meta, spec):
  """{'lm': model params (merged), 'head': head} of a reward checkpoint on spec's mesh."""
  if meta.get('stage') != 'reward':
    raise UserError(f'{directory}/{step} is not a reward model (its stage is '
                    f'{meta.get("stage") or "pretrain"}); give a workdir made by `run.py reward`')
  state_dir = os.path.join(directory, str(step), 'state')
  head_abstract = jax.eval_shape(lambda: scalar_head.init(spec.cfg.d_model))
  head_shardings = scalar_head.shardings(spec.mesh)
  if meta.get('adapter') == 'lora':
    base = meta['base']
    base_params, _ = restore_params.model_params(
        base['directory'], base['step'], restore_params.read_meta(base['directory'],
                                                                  base['step']), spec)
    targets = tuple(meta['lora']['targets'])
    abstract = {'lm': jax.eval_shape(lambda: lora.init_adapters(
        jax.random.key(0), base_params, targets, meta['lora']['rank'])), 'head': head_abstract}
    shardings = {'lm': restore_params.adapter_shardings(spec, targets), 'head': head_shardings}
    restored = restore_params.restore_tree(state_dir, abstract, shardings)
    return {'lm': lora.merge(base_params, restored['lm'], meta['lora']['scale']),
            'head': restored['head']}
  abstract = {'lm': jax.eval_shape(spec.init_params, jax.random.key(0)), 'head': head_abstract}
  shardings = {'lm': spec.param_shardings, 'head': head_shardings}
  return restore_params.restore_tree(state_dir, abstract, shardings)


def check_reward_from(reward_from):
  """--reward_from names a workdir with checkpoints (their stage is checked on loading)."""
  fix = ('train one with `run.py reward --init_from=<your SFT workdir> --workdir=DIR` and give '
         '--reward_from=DIR')
  if not reward_from:
    raise UserError(f'--reward_from is required: a workdir made by `run.py reward`; {fix}')
  path = paths.resolve(reward_from, '--reward_from')
  if not restore_params.all_steps(os.path.join(path, 'checkpoints')):
    missing = 'does not exist' if not paths.exists(path) else 'holds no checkpoint'
    raise UserError(f'--reward_from={reward_from} {missing}; it must be a workdir made by '
                    f'`run.py reward`: {fix}')


def load_reward_model(workdir, config, checkpoint=None, step=None, mesh=None):
  """(spec, {'lm', 'head'}, tokenizer, saved config, step, meta) of a reward workdir; a
  damaged latest step falls back to the one before (a named one is an error)."""
  def load(directory, step, meta):
    saved = ml_collections.ConfigDict(meta['config'])
    tok_path = tokenizer_lib.tokenizer_path(workdir, config.tokenizer) if workdir else None
    if tok_path is None or not paths.isfile(tok_path):
      tok_path = os.path.join(os.path.dirname(directory), 'tokenizer', tokenizer_lib.MODEL_FILE)
    tokenizer = tokenizer_lib.load_tokenizer(tok_path, saved.model.vocab_size)
    spec = train_state.ModelSpec(saved.model, mesh or mesh_lib.make_mesh(config.mesh))
    return spec, reward_params(directory, step, meta, spec), tokenizer, saved, step, meta
  return restore_params.with_fallback(workdir, checkpoint, step, load)
