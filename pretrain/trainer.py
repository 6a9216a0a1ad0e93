"""`run.py pretrain`: the training loop around the jitted step.

Per step: next local batch → global jax.Array → train step → metrics. Every
`log_every` steps a metrics line; every `eval_every` a validation loss; every
`save_every_steps` / `save_every_minutes` an async checkpoint. SIGTERM/SIGINT
finish the current step, save, wait for the write, and exit 0.
"""
import math
import os
import signal
import sys
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
from tqdm import tqdm

from configs.errors import UserError
from data_pipeline import pretrain_loader
from data_pipeline import tfds_corpus
from data_pipeline import tokenizer as tokenizer_lib
from data_pipeline.global_batch import make_global_batch
from data_pipeline.global_batch import process_row_block
from engine import checkpointing
from engine import flops
from engine import mesh as mesh_lib
from engine import optimizer
from engine import train_state
from engine import train_step
from engine.metrics import MetricsWriter


class StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.signal = None
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, self._handle)

  def _handle(self, signum, _):
    self.signal = signal.Signals(signum).name


def agree(local_signal, local_due_by_time):
  """(signal, due_by_time) as every process will act on them.

  One allgather per step when there are several processes: a signal or a
  clock-based save seen by one process is acted on by all at the same step, so
  no process enters a collective save (or leaves the loop) alone.
  """
  if jax.process_count() == 1:
    return local_signal, local_due_by_time
  flags = multihost_utils.process_allgather(
      np.asarray([int(local_signal is not None), int(bool(local_due_by_time))]))
  flags = np.asarray(flags).reshape(-1, 2)
  signal_name = (local_signal or 'SIGTERM (on another process)') if flags[:, 0].any() else None
  return signal_name, bool(flags[:, 1].any())


def evaluate(eval_fn, params, config, source, tokenizer, mesh, num_batches):
  """Mean next-token loss over the first `num_batches` validation batches."""
  per_process = config.train.batch_size // jax.process_count()
  it = iter(pretrain_loader.eval_dataset(config, source, tokenizer, jax.process_index(),
                                         jax.process_count()))
  total, count = 0.0, 0.0
  for _ in range(num_batches):
    local = next(it, None)
    if local is None:  # keep every process stepping together: pad with empty rows
      local = {k: np.zeros((0, config.data.seq_len), np.int32)
               for k in ('inputs', 'targets', 'segment_ids', 'positions')}
    batch = make_global_batch(pretrain_loader.pad_batch(local, per_process), mesh)
    ce, n = eval_fn(params, batch)
    total, count = total + float(ce), count + float(n)
  loss = total / max(count, 1.0)
  return {'eval_loss': loss, 'eval_perplexity': math.exp(min(loss, 50.0)), 'eval_tokens': count}


class Pretrainer:

  def __init__(self, config, workdir, resume=True):
    self.config, self.workdir = config, workdir
    self.is_primary = jax.process_index() == 0
    self.tokenizer = tokenizer_lib.load_tokenizer(
        tokenizer_lib.tokenizer_path(workdir, config.tokenizer), config.model.vocab_size)
    self.mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.check_divisible(config, self.mesh)
    self.spec = train_state.ModelSpec(config.model, self.mesh)
    self.tx = optimizer.make_optimizer(config.train)
    self.schedule = optimizer.learning_rate_schedule(config.train)
    self.train_source = tfds_corpus.open_split(config, workdir, config.data.train_split)
    self.eval_source = tfds_corpus.open_split(config, workdir, config.data.eval_split)
    if len(self.train_source) == 0:
      raise UserError('the training split is empty; give files with text')
    row_block, num_blocks = process_row_block(self.mesh, config.train.batch_size)
    self.data_iter = pretrain_loader.train_dataset(
        config, self.train_source, self.tokenizer, row_block, num_blocks)
    self.manager = checkpointing.make_manager(workdir, config.checkpoint)
    self.meta = checkpointing.metadata(config, self.tokenizer, self.mesh)
    self.state, self.shardings = self._restore_or_init(resume)
    self.progress = self.writer = None

  def _restore_or_init(self, resume):
    steps = sorted(self.manager.all_steps(), reverse=True) if resume else []
    if not resume:  # a fresh run must never be mixed with an older run's steps
      for step in self.manager.all_steps():
        kept = self._set_aside(step, 'before-noresume')
        print(f'pretrain: --noresume: set aside checkpoint {step} as {kept}', flush=True)
    for step in steps:  # newest first; an unreadable one falls back to the one before
      try:
        restored = self._restore(step)
      except UserError:
        raise
      except Exception as e:  # Orbax/TensorStore raise many types for damaged files
        logging.warning('checkpoint %d is unreadable (%s); trying the previous one', step,
                        str(e).splitlines()[0][:200])
        print(f'pretrain: warning: checkpoint {step} is unreadable; set aside as '
              f'{self._set_aside(step, "unreadable")}; trying the previous one', flush=True)
        continue
      print(f'pretrain: resumed from step {step} in {self.workdir}/checkpoints', flush=True)
      return restored
    return train_state.create_train_state(self.spec, self.tx, self.config.seed)

  def _restore(self, step):
    abstract, shardings = train_state.abstract_train_state(self.spec, self.tx)
    meta = self.manager.restore(step, args=checkpointing.ocp.args.Composite(
        meta=checkpointing.ocp.args.JsonRestore()))['meta']
    checkpointing.check_compatible(meta, self.config, self.tokenizer)
    state, data_state, _ = checkpointing.restore(self.manager, step, abstract)
    wanted = set(self.data_iter.get_state()['shards'])
    if data_state is not None and wanted <= set(data_state.get('shards', {})):
      self.data_iter.set_state({'shards': {s: data_state['shards'][s] for s in wanted}})
    else:
      logging.warning('checkpoint %d holds no data state for shards %s (a different '
                      'data.num_shards?); the data stream restarts', step, sorted(wanted))
      print(f'pretrain: warning: data shards {sorted(wanted)} not in checkpoint {step}; the '
            'data stream restarts (keep data.num_shards fixed to avoid this)', flush=True)
    return state, shardings

  def _set_aside(self, step, reason):
    """Renames a step directory out of Orbax's view, keeping its files for the user."""
    path = os.path.join(self.workdir, 'checkpoints', str(step))
    target = f'{path}.{reason}-{int(time.time())}'
    if jax.process_index() == 0:
      os.rename(path, target)
    multihost_utils.sync_global_devices(f'set_aside_{step}')
    self.manager.reload()
    return target

  def save(self, step, force=False):
    if step in self.manager.all_steps():  # e.g. --noresume over an older run's steps
      self.manager.wait_until_finished()
      self._set_aside(step, 'replaced')
    checkpointing.save(self.manager, step, self.state, self.data_iter.get_state(),
                       dict(self.meta, wall_time=time.time()), force=force)

  def run(self):
    try:
      return self._loop()
    finally:  # on errors too: finish pending saves, and leave the error line last
      self.manager.wait_until_finished()
      if self.progress is not None:
        self.progress.close()
      if self.writer is not None:
        self.writer.close()

  def _loop(self):
    config, train_cfg = self.config, self.config.train
    step_fn = train_step.make_train_step(self.spec, self.tx, self.schedule, self.shardings,
                                         train_cfg)
    eval_fn = train_step.make_eval_step(self.spec, self.shardings)
    writer = self.writer = MetricsWriter(self.workdir, enabled=self.is_primary)
    tokens_per_step = train_cfg.batch_size * config.data.seq_len
    flops_per_token = flops.train_flops_per_token(config.model, config.data.seq_len)
    peak = train_cfg.peak_tflops * 1e12 or flops.measure_matmul_peak()
    devices = jax.device_count()
    stop = StopRequest()
    start = int(jax.device_get(self.state['step']))
    last_save_time = time.time()
    progress = self.progress = tqdm(
        total=train_cfg.steps, initial=start, disable=not self.is_primary, desc='pretrain',
        unit='step', dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0)  # logs, not a screen: fewer lines
    window_start, window_steps = time.perf_counter(), 0
    eval_metrics = None
    step, stopping = start, None
    if start == 0:  # every process evaluates (collectives); only process 0 writes
      eval_metrics = evaluate(eval_fn, self.state['params'], config, self.eval_source,
                              self.tokenizer, self.mesh, train_cfg.eval_batches)
      writer.write(0, eval_metrics)
    while step < train_cfg.steps:
      batch = make_global_batch(next(self.data_iter), self.mesh)
      self.state, metrics = step_fn(self.state, batch)
      step += 1
      loss = float(metrics['loss'])
      if not math.isfinite(loss):
        kept = self.manager.latest_step()
        raise UserError(f'loss is {loss} at step {step}; '
                        + (f'the last good checkpoint (step {kept}) is kept; '
                           if kept is not None else '')
                        + 'lower train.learning_rate or enable train.grad_clip')
      window_steps += 1
      progress.update(1)
      if step == start + 1:  # the first step compiles; keep it out of the speed numbers
        window_start, window_steps = time.perf_counter(), 0
      if step % train_cfg.log_every == 0 or step == train_cfg.steps:
        values = {'loss': loss, 'perplexity': math.exp(min(loss, 50.0)),
                  'lr': float(metrics['lr']), 'grad_norm': float(metrics['grad_norm'])}
        if window_steps:  # speed over the steps since the last line (compile excluded)
          elapsed = time.perf_counter() - window_start
          tokens_per_s = window_steps * tokens_per_step / elapsed
          values.update(tokens_per_s=tokens_per_s, step_time_s=elapsed / window_steps,
                        model_tflops_per_device=flops_per_token * tokens_per_s / devices / 1e12,
                        mfu=flops_per_token * tokens_per_s / (peak * devices))
          progress.set_postfix(loss=f'{loss:.3f}', tok_s=f'{tokens_per_s:.0f}',
                               mfu=f'{values["mfu"]:.2f}', refresh=False)
        writer.write(step, values)
        window_start, window_steps = time.perf_counter(), 0
      if ((train_cfg.eval_every and step % train_cfg.eval_every == 0)
          or step == train_cfg.steps):
        eval_metrics = evaluate(eval_fn, self.state['params'], config, self.eval_source,
                                self.tokenizer, self.mesh, train_cfg.eval_batches)
        writer.write(step, eval_metrics)
        if self.is_primary:
          progress.write(f'step {step}: eval_loss {eval_metrics["eval_loss"]:.4f} '
                         f'perplexity {eval_metrics["eval_perplexity"]:.2f}')
      cfg_ckpt = config.checkpoint
      due_by_steps = cfg_ckpt.save_every_steps and step % cfg_ckpt.save_every_steps == 0
      due_by_time = (cfg_ckpt.save_every_minutes
                     and time.time() - last_save_time >= 60 * cfg_ckpt.save_every_minutes)
      stop_here = train_cfg.stop_after and step == train_cfg.stop_after
      # Decide once, together; a signal arriving later is seen at the next step.
      stopping, due_by_time = agree(stop.signal, due_by_time)
      if due_by_steps or due_by_time or step == train_cfg.steps or stopping or stop_here:
        self.save(step, force=True)
        last_save_time = time.time()
      if stopping or stop_here:
        break
    progress.close()
    self.manager.wait_until_finished()
    if stopping:
      print(f'pretrain: {stopping} received; saved step {step} to '
            f'{self.workdir}/checkpoints/{step}', flush=True)
    return {'step': step, **(eval_metrics or {})}


def run_pretrain(config, workdir, resume=True, on_ready=None):
  """Builds the trainer (every check passes or raises) and trains.

  `on_ready` runs once the checks passed, before training: that is when
  WORKDIR/config.json may be replaced.
  """
  trainer = Pretrainer(config, workdir, resume)
  if on_ready is not None:
    on_ready()
  result = trainer.run()
  if jax.process_index() == 0 and 'eval_loss' in result:
    print(f'pretrain: step {result["step"]}, eval_loss {result["eval_loss"]:.4f}, '
          f'eval_perplexity {result["eval_perplexity"]:.2f}', flush=True)
  elif jax.process_index() == 0 and result['step'] >= config.train.steps:
    print(f'pretrain: already at step {result["step"]} of train.steps={config.train.steps}; '
          'nothing to train (raise train.steps to continue)', flush=True)
  return result
