"""The continuous-batching engine (JetStream's orchestrator in one thread):
prefill a waiting request → insert it into a free slot → one decode step for all
slots → hand each slot's token to its request; a request that finishes, or whose
client went away, frees its slot before the next step, and the next waiting
request takes it. Requests beyond the slots wait in a queue (bounded)."""
import collections
import secrets
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from engine.train_step import with_mesh
from model import decode
from serving import steps


class QueueFull(Exception):
  """More requests are waiting than serve.max_queue allows."""


class Request:
  """One generation. `on_event(kind, data)` is called from the engine thread with
  ('prompt', {'logprobs', 'top_ids', 'top_logprobs'}) when prompt_logprobs is set,
  ('token', (id, logprob, argmax id, argmax logprob)) per generated token (stop
  tokens are not sent), then ('done', 'stop' | 'length' | 'cancelled'), or
  ('error', message)."""

  def __init__(self, prompt_ids, *, max_tokens, on_event, temperature=0.0, top_p=1.0,
               seed=None, stop_ids=(), prompt_logprobs=False):
    self.prompt_ids = [int(t) for t in prompt_ids]
    self.max_tokens = int(max_tokens)
    self.temperature, self.top_p = float(temperature), float(top_p)
    self.seed = secrets.randbits(31) if seed is None else int(seed) % (2**31)
    self.stop_ids = frozenset(int(t) for t in stop_ids)
    self.prompt_logprobs = prompt_logprobs
    self.on_event = on_event
    self.cancelled = False
    self.generated = 0

  def cancel(self):
    """Safe from any thread: the slot is freed before the next decode step."""
    self.cancelled = True


class Engine:
  def __init__(self, spec, params, soft_prompt=None, *, max_batch=16, min_bucket=16,
               max_queue=256, log=sys.stderr):
    self.spec, self.params, self.soft_prompt = spec, params, soft_prompt
    self.max_len = spec.cfg.max_seq_len
    self.num_virtual = 0 if soft_prompt is None else int(soft_prompt.shape[0])
    self.max_batch, self.max_queue, self.log = max_batch, max_queue, log
    self.buckets = steps.buckets(self.max_len, min_bucket)
    self._prefill = with_mesh(spec.mesh, steps.make_prefill(spec))
    self._step = with_mesh(spec.mesh, steps.make_decode_step(spec))
    self._waiting = collections.deque()
    self._wake = threading.Condition()
    self._slots = [None] * max_batch
    self._positions = np.zeros(max_batch, np.int32)
    self._stopped = False
    self._thread = None
    self.compile_seconds = None
    self.decode_steps = 0

  # -- set-up --------------------------------------------------------------------------
  def _reset_device_state(self):
    self._cache = decode.init_cache(self.spec.cfg, self.max_batch, self.max_len,
                                    jnp.dtype(self.spec.cfg.dtype))
    self._last_logits = jnp.zeros((self.max_batch, self.spec.cfg.vocab_size), jnp.float32)

  def start(self):
    """Compiles every prefill bucket and the decode step (by running them once on
    dummy inputs), then starts the engine thread. Returns the compile seconds."""
    begin = time.perf_counter()
    self._reset_device_state()
    for bucket in self.buckets:
      self._run_prefill(np.zeros(bucket, np.int32), 1, 0)
    out = self._run_step()
    jax.block_until_ready(out)
    self._reset_device_state()
    self.compile_seconds = time.perf_counter() - begin
    print(f'serve: compiled {len(self.buckets)} prefill buckets {self.buckets} and the '
          f'decode step for {self.max_batch} slots in {self.compile_seconds:.1f} s',
          file=self.log, flush=True)
    self._thread = threading.Thread(target=self._loop, name='serving-engine', daemon=True)
    self._thread.start()
    return self.compile_seconds

  def stop(self):
    with self._wake:
      self._stopped = True
      self._wake.notify_all()
    if self._thread:
      self._thread.join(timeout=10)

  # -- what callers use ----------------------------------------------------------------
  def context_room(self, prompt_len):
    """How many tokens a prompt of this length leaves room to generate."""
    return self.max_len - self.num_virtual - prompt_len

  def submit(self, request):
    if self._stopped:
      raise QueueFull('the engine is shutting down')
    with self._wake:
      if len(self._waiting) >= self.max_queue:
        raise QueueFull(f'{len(self._waiting)} requests are already waiting '
                        f'(serve.max_queue={self.max_queue}); retry later')
      self._waiting.append(request)
      self._wake.notify()

  def load(self):
    """(busy slots, waiting requests): for /health and the tests."""
    return sum(s is not None for s in self._slots), len(self._waiting)

  # -- the loop ------------------------------------------------------------------------
  def _loop(self):
    while True:
      with self._wake:
        while not self._stopped and not self._waiting and not any(self._slots):
          self._wake.wait()
        if self._stopped:
          return
      try:
        self._free_cancelled()
        self._admit()
        if any(self._slots):
          self._decode()
      except Exception as e:  # a failure ends the requests it touched, never the server
        print(f'serve: engine error: {type(e).__name__}: {e}', file=self.log, flush=True)
        for slot, request in enumerate(self._slots):
          if request is not None:
            self._finish(slot, 'error', f'engine error: {e}')
        self._reset_device_state()

  def _free_cancelled(self):
    for slot, request in enumerate(self._slots):
      if request is not None and request.cancelled:
        self._finish(slot, 'done', 'cancelled')

  def _finish(self, slot, kind, data):
    request, self._slots[slot] = self._slots[slot], None
    self._positions[slot] = 0
    request.on_event(kind, data)

  def _admit(self):
    while None in self._slots:
      with self._wake:
        if not self._waiting:
          return
        request = self._waiting.popleft()
      if request.cancelled:
        request.on_event('done', 'cancelled')
        continue
      slot = self._slots.index(None)
      ids = [0] * self.num_virtual + request.prompt_ids
      try:
        scored = self._run_prefill(np.asarray(ids, np.int32), len(ids), slot)
      except Exception as e:
        request.on_event('error', f'prefill failed: {e}')
        continue
      self._slots[slot] = request
      self._positions[slot] = len(ids)
      if request.prompt_logprobs:
        lp, top_ids, top_lp = (np.asarray(x)[self.num_virtual:len(ids)] for x in scored)
        request.on_event('prompt', {'logprobs': lp.tolist(), 'top_ids': top_ids.tolist(),
                                    'top_logprobs': top_lp.tolist()})
      if request.max_tokens == 0:  # echo only (scoring a prompt)
        self._finish(slot, 'done', 'length')

  def _run_prefill(self, ids, length, slot):
    bucket = next(b for b in self.buckets if b >= len(ids))
    tokens = np.zeros((1, bucket), np.int32)
    tokens[0, :len(ids)] = ids
    self._cache, self._last_logits, *scored = self._prefill(
        self.params, self._cache, self._last_logits, jnp.asarray(tokens),
        jnp.int32(length), jnp.int32(slot), self.soft_prompt)
    return scored

  def _run_step(self):
    rows = [(r.seed, r.generated, r.temperature, r.top_p) if r else (0, 0, 0.0, 1.0)
            for r in self._slots]
    seeds, counts, temperature, top_p = (np.asarray(c) for c in zip(*rows))
    self._cache, self._last_logits, *out = self._step(
        self.params, self._cache, self._last_logits, jnp.asarray(self._positions),
        jnp.asarray(seeds, jnp.uint32), jnp.asarray(counts, jnp.int32),
        jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
        self.soft_prompt)
    return out

  def _decode(self):
    tokens, token_lp, top_ids, top_lp = (np.asarray(x) for x in self._run_step())
    self.decode_steps += 1
    for slot, request in enumerate(self._slots):
      if request is None:
        continue
      self._positions[slot] += 1
      request.generated += 1
      token = int(tokens[slot])
      if token in request.stop_ids:
        self._finish(slot, 'done', 'stop')
        continue
      request.on_event('token', (token, float(token_lp[slot]), int(top_ids[slot]),
                                 float(top_lp[slot])))
      if request.generated >= request.max_tokens:
        self._finish(slot, 'done', 'length')
