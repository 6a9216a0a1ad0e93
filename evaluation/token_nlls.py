"""`run.py eval --token_nlls=PATH`: every document's token ids and the NLL of each
token, as eval scores them (BOS as in training, EOS at the end, the same windows
and the same forward pass). Log-likelihoods of any span of a text follow from it:
the check that a server's logprobs (lm-evaluation-harness) equal eval's."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from configs.errors import UserError
from data_pipeline.global_batch import make_global_batch
from engine import paths
from engine import restore_params
from engine.train_step import with_mesh
from evaluation import evaluate
from model import quantize as quantize_lib

ROWS = 8  # windows per forward pass


def make_token_nll_fn(spec):
  def token_nll(params, batch):
    params = quantize_lib.dequantize(params)
    logits = spec.apply(params, batch['inputs'], batch['positions'], batch['segment_ids'])
    logits = logits.astype(jnp.float32)
    target = jnp.take_along_axis(logits, batch['targets'][..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target  # (B, T) per-token NLL
  return with_mesh(spec.mesh, jax.jit(token_nll))


def run_token_nlls(config, workdir, out_path, *, checkpoint=None, step=None, eval_files=(),
                   quantize=None):
  if jax.process_count() > 1:
    raise UserError('--token_nlls runs in one process; drop the multi-process flags')
  model_cfg, params, tokenizer, spec, saved, step, _ = restore_params.load(
      workdir, config, checkpoint, step)
  params, weight_info = evaluate.quantize_params(params, quantize, spec.mesh)
  seq_len = saved.data.seq_len
  score = make_token_nll_fn(spec)
  records, total = [], 0.0
  for name, docs in evaluate.eval_sets(config, workdir, eval_files).items():
    for number, text in enumerate(docs):
      bos = [tokenizer.bos_id] if saved.data.add_bos else []  # as in training
      ids = np.asarray(bos + tokenizer.encode(text) + [tokenizer.eos_id], np.int32)
      rows = evaluate.windows(ids, seq_len, seq_len)
      nll = []
      for i in range(0, len(rows), ROWS):
        chunk = [evaluate._pad(r, seq_len) for r in rows[i:i + ROWS]]
        chunk += [evaluate._pad((np.zeros(0, np.int32),) * 2 + (np.zeros(0, np.float32),),
                                seq_len)] * (ROWS - len(chunk))
        arrays = [np.stack(a) for a in zip(*chunk)]
        batch = dict(zip(('inputs', 'targets', 'weights', 'segment_ids', 'positions'), arrays))
        values = np.asarray(score(params, make_global_batch(batch, spec.mesh)))
        for row, (_, _, weights) in enumerate(rows[i:i + ROWS]):
          nll += values[row, :len(weights)][weights > 0].tolist()
      total += sum(nll)
      records.append({'set': name, 'document': number, 'text': text,
                      'ids': ids.tolist(), 'nll': nll})
  paths.write_atomic(out_path, ''.join(json.dumps(r, ensure_ascii=False) + '\n'
                                       for r in records))
  return {'documents': len(records), 'tokens': sum(len(r['nll']) for r in records),
          'nll': total, 'step': step, 'token_nlls': out_path, **weight_info}
