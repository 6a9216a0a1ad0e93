"""A self-contained jitted train step for device checks: the model, token CE over
real tokens, global-norm clipping and AdamW (float32 params and state), one device.

It needs only the model, optax and flax (no data pipeline, no mesh), so it runs
on machines that lack grain/TFDS; its work per step is the project's step's.
"""
import contextlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from engine import flops
from engine import lm_loss
from model import attention_cudnn
from model import transformer


def packed_batch(batch, seq_len, vocab, seed=0, max_docs=None):
  """Random tokens in rows of whole documents (mean length seq_len / 4, positions
  restart per document), so the document mask decides what attends to what.
  `max_docs`: a row's last allowed document runs to the row's end."""
  rng = np.random.default_rng(seed)
  segments = np.zeros((batch, seq_len), np.int32)
  positions = np.zeros((batch, seq_len), np.int32)
  for r in range(batch):
    start, doc = 0, 1
    while start < seq_len:
      length = max(16, int(rng.exponential(seq_len / 4)))
      length = seq_len - start if max_docs and doc >= max_docs else length
      segments[r, start:start + length] = doc
      positions[r, start:start + length] = np.arange(min(length, seq_len - start))
      start, doc = start + length, doc + 1
  tokens = rng.integers(8, vocab, (batch, seq_len + 1)).astype(np.int32)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'segment_ids': segments,
          'positions': positions}


@contextlib.contextmanager
def max_segments(value):
  old, attention_cudnn.MAX_SEGMENTS = attention_cudnn.MAX_SEGMENTS, value
  try:
    yield
  finally:
    attention_cudnn.MAX_SEGMENTS = old


def plain_token_loss(logits, targets, weights):
  """The loss as autodiff of logsumexp/take_along_axis sees it (before the custom VJP
  of engine/lm_loss.py), for A/B rows."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  weights = (weights > 0).astype(jnp.float32)
  return jnp.sum((log_z - target) * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def project_token_loss(logits, targets, weights):
  ce, _, count = lm_loss.token_loss_sums(logits, targets, weights, 0.0)
  return ce / jnp.maximum(count, 1.0)


def optimizer(kind='adamw'):
  """The project's update (clipping + AdamW); for A/B rows on one device, 'flat' =
  the same update over all parameters as one vector (`optax.flatten`: one fused
  kernel instead of several per tensor), 'sgd' = p - lr·g alone (what any update
  costs at least)."""
  if kind == 'sgd':
    return optax.sgd(3e-4)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1))
  return optax.flatten(tx) if kind == 'flat' else tx


def make_step(model_cfg, token_loss=project_token_loss, optimizer_kind='adamw'):
  model = transformer.Transformer(model_cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tx = optimizer(optimizer_kind)
  opt_state = tx.init(params)

  def loss_fn(params, batch):
    logits = nnx.merge(graphdef, params)(batch['inputs'], batch['positions'],
                                         batch['segment_ids'])
    return token_loss(logits, batch['targets'], batch['segment_ids'])

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1)), params, opt_state


def measure(model_cfg, kernel, batch, seq_len, steps=5, peak=None, trace_dir=None):
  """tokens/s, MFU and compile time of one train step with attention `kernel`
  ('cudnn_masked' = the cudnn kernel forced onto its document-mask fallback;
  'cudnn:16' = the packed kernel with 16 document slots per row). Options after
  '/', for A/B rows: 'docs8' = at most 8 documents per row (the packed kernel
  never falls back), 'plainloss' = `plain_token_loss`, 'dotsonly' = remat 'dots'
  without keeping the fused attention's outputs, 'flatopt' / 'sgdopt' = `optimizer`'s
  'flat' / 'sgd' update."""
  kernel, *options = kernel.split('/')
  name, _, slots = kernel.partition(':')
  model_cfg.attention = 'cudnn' if name == 'cudnn_masked' else name
  slots = 2 if name == 'cudnn_masked' else int(slots or attention_cudnn.MAX_SEGMENTS)
  loss = plain_token_loss if 'plainloss' in options else project_token_loss
  policies = dict(transformer.REMAT_POLICIES)
  if 'dotsonly' in options:
    transformer.REMAT_POLICIES['dots'] = jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
  with max_segments(slots):
    opt_kind = 'flat' if 'flatopt' in options else 'sgd' if 'sgdopt' in options else 'adamw'
    step, params, opt_state = make_step(model_cfg, loss, opt_kind)
    data = jax.device_put(packed_batch(batch, seq_len, model_cfg.vocab_size,
                                       max_docs=8 if 'docs8' in options else None))
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, data)
    first_loss = float(loss)
    compile_s = time.perf_counter() - start
  transformer.REMAT_POLICIES.update(policies)
  overflow = bool(attention_cudnn.packed_segments(data['segment_ids'], slots)['overflow'])
  params, opt_state, loss = step(params, opt_state, data)
  jax.block_until_ready(loss)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, data)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  traced = {}
  if trace_dir:  # a few more steps under the profiler, summarised per device line
    from bench import gpu_trace
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(3):
      params, opt_state, loss = step(params, opt_state, data)
    jax.block_until_ready(loss)
    jax.profiler.stop_trace()
    traced = {'trace': gpu_trace.summarise(trace_dir, 3)}
  tokens_per_s = batch * seq_len / step_s
  model_flops = flops.train_flops_per_token(model_cfg, seq_len) * tokens_per_s
  stats = jax.devices()[0].memory_stats() or {}
  return {'tokens_per_s': tokens_per_s, 'step_s': step_s, 'compile_s': compile_s,
          'model_tflops': model_flops / 1e12, 'mfu': model_flops / peak if peak else None,
          'dtype': model_cfg.dtype, 'packed_overflow': overflow, 'first_loss': first_loss,
          'last_loss': float(loss),
          'peak_gpu_mem_gib': stats.get('peak_bytes_in_use', 0) / 2**30, **traced}
