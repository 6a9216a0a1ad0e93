"""Any stage's workdir (pretrain, SFT full/LoRA/prompt, DPO, PPO, GRPO) → a started
engine and what the HTTP layer needs to know about the model."""
import dataclasses
import os

import jax

from configs.errors import UserError
from engine import restore_params
from model import quantize as quantize_lib
from serving.engine import Engine


@dataclasses.dataclass
class Served:
  engine: Engine
  tokenizer: object
  name: str  # the model id clients send and /v1/models lists
  max_len: int
  add_bos: bool  # text prompts start with BOS, as in training
  end_of_turn: int
  has_chat_tokens: bool
  step: int
  stage: str
  quantize: str
  config: object  # the command's config (serve.* keys)


def _quantized(params, mesh):
  """int8 linear weights, replicated on the mesh (dequantized inside the jitted steps)."""
  quantized = quantize_lib.quantize(jax.device_get(params))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(replicated, x),
                      quantized)


def load(config, workdir, *, step=None, checkpoint=None, quantize='none', log=None):
  if jax.process_count() > 1:  # one engine thread drives the device; nothing to join
    raise UserError('serve and chat run in one process; start them without --num_processes '
                    'or `run.py launch` (a model that needs several hosts is not served yet)')
  model_cfg, params, tokenizer, spec, saved, step, soft_prompt = restore_params.load(
      workdir, config, checkpoint, step)
  if quantize == 'int8':
    params = _quantized(params, spec.mesh)
  directory, _ = restore_params.locate(workdir, checkpoint, step)
  stage = restore_params.read_meta(directory, step).get('stage') or 'pretrain'
  engine = Engine(spec, params, soft_prompt, max_batch=config.serve.max_batch,
                  min_bucket=config.serve.min_bucket, max_queue=config.serve.max_queue,
                  **({'log': log} if log else {}))
  end = tokenizer.chat_ids['<|end_of_turn|>']
  name = os.path.basename(os.path.normpath(workdir)) or 'model'
  return Served(engine=engine, tokenizer=tokenizer, name=name, max_len=model_cfg.max_seq_len,
                add_bos=bool(saved.data.add_bos), end_of_turn=end,
                has_chat_tokens=tokenizer.piece(end) == '<|end_of_turn|>', step=step,
                stage=stage, quantize=quantize, config=config)
