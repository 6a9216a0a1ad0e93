"""`run.py export`: an Orbax checkpoint → a Hugging Face LLaMA directory.

Tensors are read from the checkpoint one at a time (Orbax partial restore) and
written into safetensors shards of at most `hf.shard_mb`, so with --noparity
host memory holds one shard, not the model (the parity check runs the whole
model, so it needs it in memory). The directory is built beside the target and moved
into place only after the parity check passes.
"""
import json
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from safetensors.numpy import save_file

from configs.errors import UserError
from data_pipeline import chat_template
from data_pipeline import tokenizer as tokenizer_lib
from model import hf_convert
from interop import hf_parity
from engine import integrity
from engine import restore_params
from engine import paths


def read_leaf(state_dir, path):
  """One param as numpy, checked against its saved fingerprint."""
  item, args = {}, {}
  hf_convert.set_path(item, ('params',) + path, 0)
  hf_convert.set_path(args, ('params',) + path, ocp.RestoreArgs(restore_type=np.ndarray))
  step_dir = os.path.dirname(os.path.abspath(state_dir))
  try:
    restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=args, partial_restore=True))
  except Exception as e:  # TensorStore/Orbax: truncated or missing array files
    raise integrity.DamagedCheckpoint(
        f'checkpoint {step_dir} cannot be read ({str(e).strip().splitlines()[0][:160]})') \
        from None
  leaf = hf_convert.get_path(restored['params'], path)
  integrity.verify(leaf, integrity.recorded(step_dir), f'checkpoint {step_dir}',
                   prefix="['params']" + ''.join(f'[{k!r}]' for k in path))
  return leaf


def tokenizer_files(tokenizer, out, max_len):
  with open(os.path.join(out, 'tokenizer.model'), 'wb') as f:
    f.write(tokenizer.model_proto)
  special = {'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>', 'pad_token': '<pad>'}
  with open(os.path.join(out, 'tokenizer_config.json'), 'w') as f:
    json.dump({'tokenizer_class': 'LlamaTokenizer', 'add_bos_token': False,
               'add_eos_token': False, 'legacy': False, 'add_prefix_space': False,
               'model_max_length': max_len,
               'additional_special_tokens': list(tokenizer_lib.CHAT_TOKENS),
               'chat_template': chat_template.JINJA_TEMPLATE, **special}, f, indent=1)
  with open(os.path.join(out, 'special_tokens_map.json'), 'w') as f:
    json.dump(special, f, indent=1)


def write_tensors(state_dir, model_cfg, out, shard_bytes, keep=None, params=None):
  """Streams tensors into shards; `keep` (a dict) also receives each param as read,
  so the parity check does not read the checkpoint a second time. With `params`
  (a LoRA model merged in memory) tensors come from there instead."""
  current, size, index = {}, 0, {}
  for hf_name, path, to_hf, _ in hf_convert.tensor_map(model_cfg):
    leaf = (read_leaf(state_dir, path) if params is None
            else np.asarray(jax.device_get(hf_convert.get_path(params, path))))
    if keep is not None:
      hf_convert.set_path(keep, path, leaf)
    tensor = np.ascontiguousarray(to_hf(leaf))
    if current and size + tensor.nbytes > shard_bytes:  # memory holds one shard at most
      _flush(current, out, index)
      current, size = {}, 0
    current[hf_name] = tensor
    size += tensor.nbytes
  if current:
    _flush(current, out, index)
  files = sorted(set(index.values()))
  if len(files) == 1:
    os.rename(os.path.join(out, files[0]), os.path.join(out, 'model.safetensors'))
    return 1
  total = len(files)
  renamed = {name: f'model-{i + 1:05d}-of-{total:05d}.safetensors' for i, name in
             enumerate(files)}
  for old, new in renamed.items():
    os.rename(os.path.join(out, old), os.path.join(out, new))
  with open(os.path.join(out, 'model.safetensors.index.json'), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': {k: renamed[v] for k, v in index.items()}}, f,
              indent=1)
  return total


def _flush(tensors, out, index):
  name = f'part-{len(set(index.values())):05d}.safetensors'
  save_file(tensors, os.path.join(out, name), metadata={'format': 'pt'})
  for key in tensors:
    index[key] = name


def merged_lora(meta, directory, step, saved, config):
  """The params in memory when they are not the checkpoint's own tensors: W + scale·A·B
  for a LoRA checkpoint, the actor of a PPO one; else None (streamed tensor by tensor)."""
  if meta.get('adapter') is None and meta.get('params_part') is None:
    return None
  if meta.get('adapter') == 'prompt':
    raise UserError('a prompt-tuned model has no Hugging Face LLaMA form (its soft prompt is '
                    'not a weight); export its base workdir, or fine-tune with full or lora')
  from engine import mesh as mesh_lib
  from engine import train_state
  spec = train_state.ModelSpec(saved.model, mesh_lib.make_mesh(config.mesh))
  return jax.device_get(restore_params.model_params(directory, step, meta, spec)[0])


def run_export(config, workdir, out, *, checkpoint=None, step=None, overwrite=False,
               parity=True):
  if jax.process_count() > 1:
    raise UserError('export runs in a single process; start it without launch')
  if not out:
    raise UserError('--out is required: the directory to write the Hugging Face model into')
  out = paths.resolve(out, '--out')
  if paths.isfile(out):
    raise UserError(f'--out={out} is a file; give a directory path for the Hugging Face model')
  if paths.listdir(out) and not overwrite:
    raise UserError(f'{out} exists and is not empty; choose another --out or pass --overwrite')
  if parity:
    hf_parity.import_hf()
  return restore_params.with_fallback(
      workdir, checkpoint, step,
      lambda directory, step, meta: _export_step(config, workdir, out, directory, step, meta,
                                                 parity))


def _export_step(config, workdir, out, directory, step, meta, parity):
  restore_params.check_language_model(directory, step, meta)
  saved = ml_collections.ConfigDict(meta['config'])
  tokenizer = tokenizer_lib.load_tokenizer(
      tokenizer_lib.tokenizer_path(workdir, config.tokenizer), saved.model.vocab_size)
  start = time.perf_counter()
  # Written beside --out and renamed into place (one rename: never half a model); on
  # gs:// written locally and uploaded, the old files removed first.
  staging = (os.path.join(paths.local_scratch('export-'), 'model') if paths.is_remote(out)
             else f'{out}.partial-{os.getpid()}')
  shutil.rmtree(staging, ignore_errors=True)
  try:
    os.makedirs(staging)
  except OSError as e:
    raise UserError(f'cannot write beside --out={out} ({e.strerror}); give a writable '
                    'directory path') from None
  try:
    state_dir = os.path.join(directory, str(step), 'state')
    params = {} if parity else None
    shards = write_tensors(state_dir, saved.model, staging, config.hf.shard_mb * 2**20, params,
                           merged_lora(meta, directory, step, saved, config))
    with open(os.path.join(staging, 'config.json'), 'w') as f:
      json.dump(hf_convert.hf_config(saved.model, tokenizer), f, indent=1)
    with open(os.path.join(staging, 'generation_config.json'), 'w') as f:
      json.dump({'bos_token_id': tokenizer.bos_id, 'eos_token_id': tokenizer.eos_id,
                 'pad_token_id': tokenizer.pad_id}, f, indent=1)
    tokenizer_files(tokenizer, staging, saved.model.max_seq_len)
    result = {'out': out, 'step': step, 'shards': shards}
    if parity:
      result['parity'] = hf_parity.compare(saved.model, params, staging,
                                           config.hf.parity_sequences)
      hf_parity.check(result['parity'], config.hf.parity_tolerance)
    for name in os.listdir(staging):  # the umask's mode, not save_file's private 0600
      os.chmod(os.path.join(staging, name), 0o666 & ~_umask())
    if paths.is_remote(out):
      for old in paths.walk_files(out):
        paths.remove(old)
      paths.upload_tree(staging, out)
    else:
      if os.path.exists(out):
        shutil.rmtree(out)
      os.rename(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  result['seconds'] = time.perf_counter() - start
  return result


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask
