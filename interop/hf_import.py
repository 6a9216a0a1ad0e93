"""`run.py import`: a local Hugging Face LLaMA directory → an Orbax checkpoint.

The result is step 0 of WORKDIR/checkpoints with a fresh optimizer state, plus
WORKDIR/config.json and (if the directory has one) the SentencePiece tokenizer,
so `pretrain` (continued pretraining) and later stages start from it:
`python run.py pretrain --config=configs/from_workdir.py:WORKDIR --workdir=WORKDIR`.
"""
import json
import os
import time

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open

from configs import base
from configs.errors import UserError
from configs.validate import validate
from data_pipeline import tokenizer as tokenizer_lib
from model import hf_convert
from model import transformer
from engine import checkpointing
from interop import hf_parity
from engine import mesh as mesh_lib
from engine import optimizer
from engine import train_state
from engine import paths


def _safetensor_files(hf_dir):
  index = os.path.join(hf_dir, 'model.safetensors.index.json')
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)['weight_map']
    return {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
  single = os.path.join(hf_dir, 'model.safetensors')
  if not os.path.exists(single):
    raise UserError(f'no model.safetensors (or model.safetensors.index.json) in {hf_dir}; '
                    'only safetensors checkpoints are read')
  with safe_open(single, framework='flax') as f:
    return {name: single for name in f.keys()}


def imported_config(hf, config):
  fields = hf_convert.model_fields_from_hf(hf)
  imported = base.get_config()
  for key, value in fields.items():
    imported.model[key] = value
  imported.tokenizer.vocab_size = fields['vocab_size']
  imported.data.seq_len = min(config.data.seq_len, fields['max_seq_len'])
  imported.model.attention_block = config.model.attention_block
  validate(imported)
  return imported


def run_import(config, hf_dir, workdir, parity=True):
  if jax.process_count() > 1:
    raise UserError('import runs in a single process; start it without launch')
  if hf_dir:
    hf_dir = paths.resolve(hf_dir, '--hf_dir')
  if not hf_dir or not paths.isfile(os.path.join(hf_dir, 'config.json')):
    raise UserError(f'--hf_dir={hf_dir} has no config.json; give a Hugging Face model '
                    'directory')
  if paths.listdir(os.path.join(workdir, 'checkpoints')):
    raise UserError(f'{workdir} already has checkpoints; import into a new workdir')
  if parity:
    hf_parity.import_hf()
  source = hf_dir
  if paths.is_remote(hf_dir):  # safetensors and transformers read local files
    hf_dir = paths.local_scratch('hf-import-')
    paths.download_tree(source, hf_dir)
  with open(os.path.join(hf_dir, 'config.json')) as f:
    hf = json.load(f)
  imported = imported_config(hf, config)
  cfg = imported.model
  tokenizer = None
  sp_model = os.path.join(hf_dir, 'tokenizer.model')
  if os.path.exists(sp_model):
    tokenizer = tokenizer_lib.load_tokenizer(sp_model)
    if tokenizer.vocab_size != cfg.vocab_size:
      raise UserError(f'{sp_model} has {tokenizer.vocab_size} pieces but config.json says '
                      f'vocab_size={cfg.vocab_size}; the directory is inconsistent')
  start = time.perf_counter()
  files = _safetensor_files(hf_dir)
  abstract = transformer.abstract_model(cfg)
  shapes = jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
  params = {}
  for hf_name, path, _, from_hf in hf_convert.tensor_map(cfg):
    if hf_name not in files:
      raise UserError(f'tensor {hf_name} is missing from the safetensors files in {hf_dir}')
    try:  # 'flax' reads bfloat16 too (most published LLaMA weights); numpy cannot
      with safe_open(files[hf_name], framework='flax') as f:
        tensor = np.asarray(f.get_tensor(hf_name).astype(np.float32))
    except (OSError, ValueError, TypeError) as e:
      raise UserError(f'cannot read tensor {hf_name} from {files[hf_name]} ({e}); the file is '
                      'damaged or not safetensors') from None
    value = from_hf(tensor)
    hf_convert.set_path(params, path, hf_convert.check_shape(
        hf_name, value, hf_convert.get_path(shapes, path)))
  result = {'step': 0, 'hf_dir': hf_dir}
  if parity:
    result['parity'] = hf_parity.compare(cfg, params, hf_dir, config.hf.parity_sequences)
    hf_parity.check(result['parity'], config.hf.parity_tolerance)
  mesh = mesh_lib.make_mesh(config.mesh)
  spec = train_state.ModelSpec(cfg, mesh)
  tx = optimizer.make_optimizer(imported.train)
  _, shardings = train_state.abstract_train_state(spec, tx)
  params = jax.device_put(params, shardings['params'])
  state = jax.jit(lambda p: {'step': np.int32(0), 'params': p, 'opt_state': tx.init(p)},
                  out_shardings=shardings)(params)
  if tokenizer is not None:
    tokenizer_lib.save_tokenizer(tokenizer, os.path.join(workdir, 'tokenizer'))
  manager = checkpointing.make_manager(workdir, imported.checkpoint)
  meta = {'config': json.loads(imported.to_json()), 'wall_time': time.time(),
          'tokenizer_fingerprint': tokenizer.fingerprint if tokenizer else None,
          'git_commit': checkpointing.git_commit(), 'imported_from': source}
  checkpointing.save(manager, 0, state, {'shards': {}}, meta, force=True)
  manager.wait_until_finished()
  manager.close()
  paths.write_atomic(os.path.join(workdir, 'config.json'), imported.to_json(indent=1))
  result['seconds'] = time.perf_counter() - start
  result['params'] = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
  return result
