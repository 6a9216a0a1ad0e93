"""What a fine-tuning stage trains over a restored base model: the whole model
(`full`) or LoRA adapters on the frozen base (`lora`). Shared by sft, reward and dpo.

For LoRA the base is `frozen` (never a second copy of the weights: the frozen
reference of DPO is this same base with the adapters off). For `full` the stage
may keep a frozen copy as its reference (`keep_reference`).
"""
import jax
import jax.numpy as jnp

from engine import restore_params
from model import lora


class Trainable:

  def __init__(self, method, spec, base_params, lora_cfg, keep_reference=False):
    self.method, self.spec = method, spec
    self.scale = lora_cfg.lora_alpha / lora_cfg.lora_rank
    self.frozen, self.frozen_shardings = {}, {}
    if method == 'full':
      self.param_shardings, self.init_params = spec.param_shardings, spec.init_params
      # The train state is donated to the step: the reference must be its own buffers.
      self.start = jax.tree.map(jnp.copy, base_params) if keep_reference else base_params
      if keep_reference:
        self.frozen, self.frozen_shardings = base_params, spec.param_shardings
      self.meta = {}
      return
    targets = tuple(lora_cfg.lora_targets)
    abstract = jax.eval_shape(lambda: base_params)
    lora.check_rank(abstract, targets, lora_cfg.lora_rank)
    self.init_params = lambda key: lora.init_adapters(key, abstract, targets, lora_cfg.lora_rank)
    self.param_shardings = restore_params.adapter_shardings(spec, targets)
    self.start = None  # adapters from the seed (B = 0: step 0 is the base exactly)
    self.frozen, self.frozen_shardings = base_params, spec.param_shardings
    self.meta = {'adapter': 'lora', 'lora': {'rank': lora_cfg.lora_rank, 'scale': self.scale,
                                             'targets': list(targets)}}

  def model_params(self, params, frozen):
    """The params the model runs with (adapters merged in for LoRA)."""
    return params if self.method == 'full' else lora.merge(frozen, params, self.scale)

  def reference_params(self, frozen):
    """The frozen start model: the base (LoRA, adapters off) or the kept copy (full)."""
    return frozen


def start_model(config, workdir, init_from, stage):
  """(InitFrom, mesh, ModelSpec, base params) for a stage starting from --init_from.

  The run's architecture and tokenizer must be the init checkpoint's; its
  tokenizer must have the chat control tokens every post-training stage uses.
  """
  from configs.errors import UserError
  from engine import mesh as mesh_lib
  from engine import train_state
  from posttrain import init_from as init_from_lib
  init = init_from_lib.resolve(init_from)
  init_from_lib.check_matches(init, config, workdir)
  tokenizer = init.tokenizer
  if tokenizer.piece(tokenizer.chat_ids['<|end_of_turn|>']) != '<|end_of_turn|>':
    raise UserError('the tokenizer of --init_from has no chat control tokens; train one with '
                    '`python run.py tokenizer` (they are reserved there)')
  mesh = mesh_lib.make_mesh(config.mesh)
  mesh_lib.check_divisible(config, mesh)
  spec = train_state.ModelSpec(config.model, mesh)
  if init.meta.get('stage') == 'reward':
    raise UserError(f'--init_from is a reward model; {stage} starts from a language model '
                    '(a pretrain or sft workdir)')
  base_params, base_prompt = restore_params.model_params(init.directory, init.step, init.meta,
                                                         spec)
  if base_prompt is not None:
    raise UserError(f'--init_from is a prompt-tuned checkpoint, which {stage} cannot start '
                    'from; start from its base or from a full or LoRA fine-tune')
  return init, mesh, spec, base_params


def base_meta(init):
  """What a stage's checkpoint records of its start (adapters need it to load)."""
  return {'directory': init.directory, 'step': init.step,
          'fingerprint': restore_params.fingerprint(init.directory, init.step)}


def check_resume(meta, config, tokenizer, own_meta, method_key):
  """A workdir's checkpoints resume only with the same method and the same start."""
  from configs.errors import ResumeConflict
  from engine import checkpointing
  checkpointing.check_compatible(meta, config, tokenizer, own_meta['stage'])
  if meta.get('method') != own_meta['method']:
    raise ResumeConflict(f'{method_key}={own_meta["method"]} but the checkpoints in this '
                         f'workdir were trained with {meta.get("method")}',
                         'use a new workdir or --noresume')
  if meta.get('base', {}).get('fingerprint') != own_meta['base']['fingerprint']:
    raise ResumeConflict(f'the checkpoints in this workdir were trained from '
                         f'{meta["base"]["directory"]}/{meta["base"]["step"]}, not --init_from',
                         'resume with that --init_from or use a new workdir')


def pretrain_workdir(init):
  """The workdir whose corpus measures forgetting: --init_from's own, or the one it names."""
  import os
  from engine import paths
  if paths.isdir(os.path.join(init.workdir, 'tfds')):
    return init.workdir
  return init.meta.get('pretrain_workdir')
