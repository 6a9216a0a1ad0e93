"""The training loop every stage runs on: `Trainer(stage).run()`.

A stage (pretrain, sft, ...) supplies its objective, its data and its trainable
state (see `Stage` below); the loop gives every stage the same promises: resume
from the latest complete checkpoint (an unreadable one is set aside and the one
before is used), SIGTERM/SIGINT agreed by all processes (finish the step, save,
exit 0), `train.stop_after`, a stop on a non-finite loss, progress bar,
metrics.jsonl + TensorBoard with tokens/s and MFU, and Orbax checkpoints with
the data iterator's state, the stage's metadata and per-array fingerprints
(checked on restore). One run per workdir (WORKDIR/.lock); a checkpoint save
that fails stops training at once with one line (engine/storage.py).
"""
import math
import os
import sys
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
from tqdm import tqdm

from configs.errors import DataStateMismatch
from configs.errors import UserError
from data_pipeline.global_batch import make_global_batch
from engine import checkpointing
from engine import flops
from engine import integrity
from engine import paths
from engine import storage
from engine import train_state
from engine import train_step
from engine.metrics import MetricsWriter
from engine.stage import Stage  # noqa: F401  (stages import it from here too)
from engine.stage import eval_at  # noqa: F401
from engine.stop_agreement import StopRequest
from engine.stop_agreement import agree
from engine.workdir_lock import workdir_lock


class Trainer:

  def __init__(self, stage, resume=True):
    self.stage = stage
    self.config, self.workdir = stage.config, stage.workdir
    self.is_primary = jax.process_index() == 0
    self.checkpoints = os.path.join(self.workdir, 'checkpoints')
    storage.install_quiet_hooks()
    storage.require_writable_dir(self.workdir)
    self.lock = None
    self._take_lock()
    try:
      self.manager = checkpointing.make_manager(self.workdir, self.config.checkpoint)
      self._pending_save = None  # the step of an async save not yet known to be complete
      self.state, self.shardings = self._restore_or_init(resume)
    except BaseException:
      if self.lock is not None:
        self.lock.release()
      raise
    self.start_step = int(jax.device_get(self.state['step']))
    self.progress = self.writer = None

  def _take_lock(self):
    """Process 0 holds WORKDIR/.lock; every process learns whether it got it."""
    error = None
    if self.is_primary:
      try:
        self.lock = workdir_lock(self.workdir, self.stage.name)
      except UserError as e:
        error = e
    if jax.process_count() > 1:
      taken = multihost_utils.process_allgather(np.asarray(int(error is None)))
      if error is None and not np.asarray(taken).all():
        error = UserError(f'{self.workdir} is in use by another run (see process 0\'s error '
                          'line); wait for it to finish or use another --workdir')
    if error is not None:
      raise error

  def _say(self, message):
    if self.is_primary:
      print(f'{self.stage.name}: {message}', flush=True)

  def _restore_or_init(self, resume):
    steps = sorted(self.manager.all_steps(), reverse=True) if resume else []
    if not resume:  # a fresh run must never be mixed with an older run's steps
      for step in self.manager.all_steps():
        self._say(f'--noresume: set aside checkpoint {step} as '
                  f'{self._set_aside(step, "before-noresume")}')
      metrics = os.path.join(self.workdir, 'metrics.jsonl')
      if self.is_primary and paths.isfile(metrics):  # the older run's curves, kept apart
        paths.rename(metrics, f'{metrics}.before-noresume-{int(time.time())}')
    for step in steps:  # newest first; an unreadable one falls back to the one before
      try:
        restored = self._restore(step)
      except integrity.DamagedCheckpoint:
        self._say(f'warning: checkpoint {step} is damaged (its arrays differ from the '
                  f'fingerprints saved with it); set aside as '
                  f'{self._set_aside(step, "damaged")}; trying the previous one')
        continue
      except UserError:
        raise
      except Exception as e:  # Orbax/TensorStore raise many types for damaged files
        cause = ' '.join(str(e).split())[:160]  # the one line says why, no log record repeats it
        self._say(f'warning: checkpoint {step} is unreadable ({cause}); set aside as '
                  f'{self._set_aside(step, "unreadable")}; trying the previous one')
        continue
      self._say(f'resumed from step {step} in {self.workdir}/checkpoints')
      return restored
    stage = self.stage
    start = stage.start_params()
    if start is not None:
      return train_state.state_from_params(start, stage.param_shardings, stage.tx, stage.mesh,
                                           stage.extra)
    return train_state.init_state(stage.init_params, stage.param_shardings, stage.tx,
                                  stage.mesh, jax.random.key(self.config.seed), stage.extra)

  def _restore(self, step):
    stage = self.stage
    abstract, shardings = train_state.abstract_state(stage.init_params, stage.param_shardings,
                                                     stage.tx, stage.mesh, stage.extra)
    meta = self.manager.restore(step, args=checkpointing.ocp.args.Composite(
        meta=checkpointing.ocp.args.JsonRestore()))['meta']
    stage.check_compatible(meta)
    state, data_state, _ = checkpointing.restore(self.manager, step, abstract)
    integrity.verify(state, meta.get(integrity.META_KEY), f'checkpoint {step}')
    wanted = set(stage.data_iter.get_state()['shards'])
    if data_state is not None and wanted <= set(data_state.get('shards', {})):
      try:
        stage.data_iter.set_state({'shards': {s: data_state['shards'][s] for s in wanted}})
      except DataStateMismatch as e:  # checked before any shard moves: the stream is fresh
        logging.warning('checkpoint %d: %s; the data stream restarts', step, e)
        self._say(f'warning: {e}; the weights are restored and the data stream restarts')
    else:
      logging.warning('checkpoint %d holds no data state for shards %s (a different '
                      'data.num_shards?); the data stream restarts', step, sorted(wanted))
      self._say(f'warning: data shards {sorted(wanted)} not in checkpoint {step}; the data '
                'stream restarts (keep data.num_shards fixed to avoid this)')
    return state, shardings

  def _set_aside(self, step, reason):
    """Renames a step directory out of Orbax's view, keeping its files for the user."""
    path = os.path.join(self.workdir, 'checkpoints', str(step))
    target = f'{path}.{reason}-{int(time.time())}'
    if jax.process_index() == 0:
      paths.rename(path, target)
    multihost_utils.sync_global_devices(f'set_aside_{step}')
    self.manager.reload()
    return target

  def save(self, step, force=False):
    """Starts saving `step` (async when checkpoint.async_save); a write that fails here
    or in the background raises StorageError (see `save_failure`)."""
    failure = self.save_failure(block=True)
    if failure is not None:
      raise failure
    latest = self.manager.latest_step()
    try:
      if not paths.is_remote(self.checkpoints):  # gs:// failures surface from Orbax's save
        storage.probe_write(self.checkpoints)
      storage.check_free_space(self.checkpoints, latest is not None
                               and os.path.join(self.checkpoints, str(latest)))
    except OSError as e:
      raise storage.save_failed(step, self.checkpoints, e) from None
    if step in self.manager.all_steps():  # e.g. --noresume over an older run's steps
      self._set_aside(step, 'replaced')
    if self.writer is not None:  # on gs://, the metrics up to this step become durable
      try:
        storage.bounded(self.writer.flush, self.config.checkpoint.get('timeout_s', 600),
                        f'writing {self.workdir}/metrics.jsonl')
      except Exception as e:  # pylint: disable=broad-except
        raise storage.save_failed(step, self.workdir, e) from None
    # On CPU the async writer reads the arrays' own memory after save() returns (there
    # is no device-to-host copy), while later steps donate those buffers to XLA: seen
    # here as checkpoints holding other values than their fingerprints. So on CPU it
    # gets its own copy, alive until written; GPU/TPU saves copy to the host anyway.
    snapshot = (jax.tree.map(lambda x: x.copy(), self.state)
                if jax.default_backend() == 'cpu' else self.state)
    meta = dict(self.stage.meta, wall_time=time.time(),
                **{integrity.META_KEY: integrity.fingerprint(snapshot)})
    try:
      checkpointing.save(self.manager, step, snapshot, self.stage.data_iter.get_state(),
                         meta, force=force)
    except Exception as e:  # Orbax/TensorStore: many types, the OS cause in the text
      raise storage.save_failed(step, self.checkpoints, e) from None
    self._pending_save, self._pending_snapshot = step, snapshot

  def save_failure(self, block=False):
    """The StorageError of the last save if it failed, else None. Without `block`,
    a save still being written counts as fine for now; with it, waits at most
    checkpoint.timeout_s."""
    step = self._pending_save
    if step is None or (not block and self.manager.is_saving_in_progress()):
      return None
    self._pending_save = None
    timeout = self.config.checkpoint.get('timeout_s', 600)
    deadline = time.monotonic() + timeout
    while self.manager.is_saving_in_progress():
      if time.monotonic() > deadline:
        return storage.StorageError(
            f'checkpoint {step} was not written to {self.checkpoints} within '
            f'checkpoint.timeout_s={timeout} s: the storage is hung or too slow; check it, or '
            'raise checkpoint.timeout_s')
      time.sleep(0.05)
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      return storage.save_failed(step, self.checkpoints, e)
    return None

  def run(self):
    try:
      result = self._loop()
    except BaseException:
      self._close(quiet=True)  # finish a pending save, but report the error on its way
      raise
    self._close()
    return result

  def _close(self, quiet=False):
    try:
      failure = self.save_failure(block=True)
      if failure is not None:
        storage.quiet_after_failure()
        if not quiet:
          raise failure
    except Exception:  # pylint: disable=broad-except
      if not quiet:
        raise
    finally:
      if self.progress is not None:
        self.progress.close()
      self._release(quiet)

  def _release(self, quiet):
    """Closes the metrics and releases the lock; on gs:// within a bounded time, since
    after a storage failure each remote call retries for about a minute."""
    def release():
      if self.writer is not None:
        self.writer.close()
      if self.lock is not None:
        self.lock.release()
    if not paths.is_remote(self.workdir):
      return release()
    try:
      storage.bounded(release, 15 if quiet else self.config.checkpoint.get('timeout_s', 600),
                      f'closing {self.workdir}/metrics.jsonl')
    except Exception:  # pylint: disable=broad-except
      if not quiet:
        raise

  def _remote_bound(self, fn, what):
    """fn() waited for at most checkpoint.timeout_s when the workdir or the data is on
    gs://: a read from a store that went away retries for many minutes inside
    array_record's and gcsfs's clients; here it is one error line instead."""
    data_dir = self.config.data.get('tfds_data_dir') or ''
    if not (paths.is_remote(self.workdir) or paths.is_remote(data_dir)):
      return fn()
    return storage.bounded(fn, self.config.checkpoint.get('timeout_s', 600),
                           f'{what} ({self.workdir})')

  def _evaluate(self, step, writer):
    metrics = self._remote_bound(lambda: self.stage.evaluate(self.state['params']),
                                 f'evaluating step {step}')
    if metrics:
      writer.write(step, metrics)
    return metrics

  def _finite_loss(self, step, metrics):
    """The step's loss as a float; a NaN or infinite one is a UserError naming the
    last good checkpoint."""
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      kept = self.manager.latest_step()
      raise UserError(f'loss is {loss} at step {step}; '
                      + (f'the last good checkpoint (step {kept}) is kept; '
                         if kept is not None else '')
                      + ('lower train.learning_rate (train.grad_clip='
                         f'{self.config.train.grad_clip} is on), and check the data for '
                         'extreme values' if self.config.train.grad_clip > 0 else
                         'lower train.learning_rate or enable train.grad_clip (e.g. 1.0)'))
    return loss

  def _loop(self):
    stage, config, train_cfg = self.stage, self.config, self.config.train
    if stage.make_step_fn:  # a stage that runs more than one update per step (PPO)
      step_fn = stage.make_step_fn(self.shardings)
    else:
      step_fn = train_step.make_step(stage.loss_sums, stage.tx, stage.schedule, self.shardings,
                                     stage.mesh, train_cfg.microbatches, stage.frozen_shardings)
    writer = self.writer = MetricsWriter(self.workdir, enabled=self.is_primary,
                                         start_step=self.start_step)
    peak = flops.peak_flops(train_cfg.peak_tflops)
    devices = jax.device_count()
    stop = StopRequest()
    start = self.start_step
    last_save_time = time.time()
    progress = self.progress = tqdm(
        total=train_cfg.steps, initial=start, disable=not self.is_primary, desc=stage.name,
        unit='step', dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0)  # logs, not a screen: fewer lines
    window_start, window_steps = time.perf_counter(), 0
    loop_start = window_start
    eval_metrics, eval_step = None, None
    step, stopping, pending = start, None, None
    if start == 0:  # every process evaluates (collectives); only process 0 writes
      eval_metrics, eval_step = self._evaluate(0, writer), 0
    while step < train_cfg.steps:
      rows = self._remote_bound(lambda: next(stage.data_iter),
                                f'reading the batch of step {step + 1}')
      batch = make_global_batch(rows, stage.mesh)
      self.state, metrics = step_fn(self.state, stage.frozen, batch)
      step += 1
      # The loss is read one step late, once the next step is queued: the host fetches
      # the next batch while the devices compute. A step that logs, evaluates or saves
      # reads its own before doing so.
      if pending is not None:
        self._finite_loss(*pending)
      pending = (step, metrics)
      window_steps += 1
      progress.update(1)
      if step == start + 1:  # the first step compiles; keep it out of the speed numbers
        window_start, window_steps = time.perf_counter(), 0
      if step % train_cfg.log_every == 0 or step == train_cfg.steps:
        loss, pending = self._finite_loss(step, metrics), None
        values = {k: float(v) for k, v in metrics.items() if k != 'tokens'}
        # wall time since this process began training (compile, evaluations and saves
        # included): bench/quality_vs_time.py puts quality against it
        values['time/elapsed_s'] = time.perf_counter() - loop_start
        if stage.loss_is_nll:
          values['perplexity'] = math.exp(min(loss, 50.0))
        if window_steps:  # speed over the steps since the last line (compile excluded)
          elapsed = time.perf_counter() - window_start
          tokens_per_s = window_steps * stage.tokens_per_step / elapsed
          values.update(tokens_per_s=tokens_per_s, step_time_s=elapsed / window_steps,
                        model_tflops_per_device=stage.flops_per_token * tokens_per_s / devices
                        / 1e12, mfu=stage.flops_per_token * tokens_per_s / (peak * devices))
          progress.set_postfix(loss=f'{loss:.3f}', tok_s=f'{tokens_per_s:.0f}',
                               mfu=f'{values["mfu"]:.2f}', refresh=False)
        writer.write(step, values)
        window_start, window_steps = time.perf_counter(), 0
      if ((train_cfg.eval_every and step % train_cfg.eval_every == 0)
          or step == train_cfg.steps):
        if pending is not None:
          self._finite_loss(*pending)
          pending = None
        eval_metrics, eval_step = self._evaluate(step, writer), step
        if self.is_primary and eval_metrics and 'eval_loss' in eval_metrics:
          progress.write(f'step {step}: eval_loss {eval_metrics["eval_loss"]:.4f} '
                         f'perplexity {eval_metrics["eval_perplexity"]:.2f}')
      cfg_ckpt = config.checkpoint
      due_by_steps = cfg_ckpt.save_every_steps and step % cfg_ckpt.save_every_steps == 0
      due_by_time = (cfg_ckpt.save_every_minutes
                     and time.time() - last_save_time >= 60 * cfg_ckpt.save_every_minutes)
      stop_here = train_cfg.stop_after and step == train_cfg.stop_after
      # Decide once, together; a signal arriving later is seen at the next step. A save
      # that failed in the background stops everyone here, before more training.
      failure = self.save_failure()
      if failure is not None:
        storage.quiet_after_failure()
      stopping, due_by_time = agree(stop.signal, due_by_time, failure)
      if due_by_steps or due_by_time or step == train_cfg.steps or stopping or stop_here:
        if pending is not None:  # never save the state of a step whose loss is not finite
          self._finite_loss(*pending)
          pending = None
        self.save(step, force=True)
        last_save_time = time.time()
      if stopping or stop_here:
        break
    progress.close()
    failure = self.save_failure(block=True)
    if failure is not None:
      storage.quiet_after_failure()
      raise failure
    if stopping:
      # Every process says it (the launcher's user sees each one stop at the same step).
      print(f'{stage.name}: {stopping} received; saved step {step} to '
            f'{self.workdir}/checkpoints/{step}', flush=True)
    return {'step': step, 'eval_step': eval_step, **(eval_metrics or {})}
