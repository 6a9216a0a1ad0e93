"""`run.py eval`: loss, perplexity and bits per byte of a checkpoint.

Documents are scored with sliding windows of `seq_len` tokens advancing by
`stride`: each window conditions on up to `seq_len - stride` earlier tokens and
scores only the tokens no earlier window scored, so every token of a long text is
counted exactly once. Bits per byte = total NLL / ln 2 / UTF-8 bytes of the
text, comparable across tokenizers.
"""
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs.errors import UserError
from data_pipeline import documents as documents_lib
from data_pipeline import tfds_corpus
from data_pipeline.global_batch import make_global_batch
from data_pipeline.global_batch import process_row_block
from model import quantize as quantize_lib
from engine import restore_params
from engine.train_step import with_mesh


def windows(ids, seq_len, stride):
  """Rows (inputs, targets, weights) over one document's tokens; weights mark
  the positions this window scores."""
  inputs, targets = ids[:-1], ids[1:]
  n = len(targets)
  rows, scored_until = [], 0
  for begin in range(0, n, stride):
    end = min(begin + seq_len, n)
    weights = np.zeros(end - begin, np.float32)
    weights[scored_until - begin:] = 1.0
    rows.append((inputs[begin:end], targets[begin:end], weights))
    scored_until = end
    if end == n:
      break
  return rows


def _pad(row, seq_len):
  inputs, targets, weights = row
  pad = seq_len - len(inputs)
  return (np.pad(inputs, (0, pad)), np.pad(targets, (0, pad)), np.pad(weights, (0, pad)),
          np.pad(np.ones(len(inputs), np.int32), (0, pad)),
          np.pad(np.arange(len(inputs), dtype=np.int32), (0, pad)))


def make_score_fn(spec):
  def score(params, batch):
    params = quantize_lib.dequantize(params)  # no-op unless --quantize=int8
    logits = spec.apply(params, batch['inputs'], batch['positions'], batch['segment_ids'])
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, batch['targets'][..., None], axis=-1)[..., 0]
    return jnp.sum((log_z - target) * batch['weights'], axis=-1)  # per-row NLL
  return with_mesh(spec.mesh, jax.jit(score))


def eval_sets(config, workdir, eval_files):
  """{name: [document text, ...]} from --eval_files (one entry per file) or the
  prepared validation split."""
  if eval_files:
    sets = {}
    for path in documents_lib.expand_paths(eval_files, '--eval_files'):
      docs = list(documents_lib.read_documents(path, config.data.text_format,
                                               config.data.text_field, config.data.text_split))
      if not docs:
        raise UserError(f'eval file {path} holds no text; give a non-empty file')
      sets[path] = docs
    return sets
  source = tfds_corpus.open_split(config, workdir, config.data.eval_split)
  texts = [source[i][config.data.text_field] for i in range(len(source))]
  return {config.data.eval_split: [t.decode('utf-8') if isinstance(t, bytes) else t
                                   for t in texts]}


def run_eval(config, workdir, *, checkpoint=None, step=None, eval_files=(), seq_len=None,
             stride=None, batch_size=8, max_batches=0, quantize=None):
  model_cfg, params, tokenizer, spec, saved, step, prompt = restore_params.load(
      workdir, config, checkpoint, step)
  params, weight_info = quantize_params(params, quantize, spec.mesh)
  if batch_size < 1:
    raise UserError(f'--batch_size={batch_size} must be >= 1')
  seq_len = saved.data.seq_len if seq_len is None else seq_len
  stride = seq_len if stride is None else stride
  if not 1 <= stride <= seq_len:
    raise UserError(f'--stride={stride} must be between 1 and --seq_len={seq_len}')
  if seq_len > model_cfg.max_seq_len:
    raise UserError(f'--seq_len={seq_len} exceeds the model\'s max_seq_len='
                    f'{model_cfg.max_seq_len}; lower it')
  data_ways = spec.mesh.shape['data'] * spec.mesh.shape['fsdp']
  batch_size = -(-batch_size // data_ways) * data_ways
  # Every process builds the same windows and feeds its own block of rows.
  block, blocks = process_row_block(spec.mesh, batch_size)
  mine = slice(block * batch_size // blocks, (block + 1) * batch_size // blocks)
  score = make_score_fn(spec)
  results, row_limit, rows_used = {}, max_batches * batch_size or math.inf, 0
  needed = 0
  start = time.perf_counter()
  for name, docs in eval_sets(config, workdir, eval_files).items():
    rows, doc_bytes = [], 0
    for text in docs:
      bos = [tokenizer.bos_id] if saved.data.add_bos else []  # as in training
      ids = np.asarray(bos + tokenizer.encode(text) + [tokenizer.eos_id], np.int32)
      doc_rows = windows(ids, seq_len, stride)
      if rows_used + len(rows) + len(doc_rows) > row_limit:
        needed = needed or len(doc_rows)  # whole documents only: bits per byte needs them
        break
      rows += doc_rows
      doc_bytes += len(text.encode('utf-8'))
    rows_used += len(rows)
    nll, tokens = 0.0, 0.0
    for i in range(0, len(rows), batch_size):
      chunk = [_pad(r, seq_len) for r in rows[i:i + batch_size]]
      chunk += [_pad((np.zeros(0, np.int32),) * 2 + (np.zeros(0, np.float32),), seq_len)] * (
          batch_size - len(chunk))
      arrays = [np.stack(a) for a in zip(*chunk)]
      batch = dict(zip(('inputs', 'targets', 'weights', 'segment_ids', 'positions'), arrays))
      local = {k: v[mine] for k, v in batch.items()}
      nll += float(jnp.sum(score(params, make_global_batch(local, spec.mesh))))
      tokens += float(arrays[2].sum())
    if tokens:
      results[name] = {'loss': nll / tokens, 'nll': nll, 'tokens': int(tokens),
                       'bytes': doc_bytes, 'bits_per_byte': nll / math.log(2) / doc_bytes}
  if not results and needed:
    raise UserError(f'--max_batches={max_batches} holds {row_limit} windows but the first '
                    f'document needs {needed} (documents are scored whole); give '
                    f'--max_batches={-(-needed // batch_size)} or more, or 0 for all')
  if not results:
    raise UserError('nothing to evaluate: the eval files hold no text; give files with text')
  nll = sum(r['nll'] for r in results.values())
  tokens = sum(r['tokens'] for r in results.values())
  total_bytes = sum(r['bytes'] for r in results.values())
  elapsed = time.perf_counter() - start
  summary = {'loss': nll / tokens, 'perplexity': math.exp(nll / tokens),
             'bits_per_byte': nll / math.log(2) / total_bytes, 'tokens': tokens,
             'bytes': total_bytes, 'step': step, 'tokens_per_s': tokens / elapsed,
             **weight_info,
             'files': {name: {k: r[k] for k in ('loss', 'tokens', 'bits_per_byte')}
                       | {'perplexity': math.exp(r['loss'])} for name, r in results.items()}}
  return summary


def quantize_params(params, quantize, mesh):
  """(params as the model will hold them, {stored linear weight bytes, mode})."""
  if quantize not in (None, '', 'none', 'int8'):
    raise UserError(f'--quantize={quantize} is not supported; use int8 or leave it out')
  full = quantize_lib.weight_bytes(params)
  if quantize != 'int8':
    return params, {'quantize': 'none', 'linear_weight_bytes': full}
  quantized = quantize_lib.quantize(jax.device_get(params))
  stored = quantize_lib.weight_bytes(quantized)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  quantized = jax.tree.map(lambda x: jax.make_array_from_process_local_data(replicated, x),
                           quantized)
  return quantized, {'quantize': 'int8', 'linear_weight_bytes': stored,
                     'linear_weight_bytes_float32': full}


def format_summary(summary):
  lines = [f'{"set":<40} {"tokens":>9} {"loss":>8} {"ppl":>9} {"bits/byte":>9}']
  for name, r in summary['files'].items():
    lines.append(f'{os.path.basename(name)[:40]:<40} {r["tokens"]:>9} {r["loss"]:>8.4f} '
                 f'{r["perplexity"]:>9.2f} {r["bits_per_byte"]:>9.4f}')
  lines.append(f'{"overall (step " + str(summary["step"]) + ")":<40} {summary["tokens"]:>9} '
               f'{summary["loss"]:>8.4f} {summary["perplexity"]:>9.2f} '
               f'{summary["bits_per_byte"]:>9.4f}')
  if summary.get('quantize') == 'int8':
    lines.append(f'int8 linear weights: {summary["linear_weight_bytes"] / 2**20:.2f} MiB '
                 f'(float32: {summary["linear_weight_bytes_float32"] / 2**20:.2f} MiB)')
  return '\n'.join(lines)
