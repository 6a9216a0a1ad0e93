"""The jitted train step every stage shares, around a stage's `loss_sums`.

A stage gives `loss_sums(params, frozen, batch) -> (objective sum, {'loss': sum,
'count': n, ...})`: sums, not means, so gradient accumulation over microbatches
(a `lax.scan`) and the final division by the total count give exactly the
update of one big batch. `params` are the trainable leaves (whole model, LoRA
adapters or a soft prompt), `frozen` what the loss reads but never updates.
"""
import jax
import jax.numpy as jnp
import optax

from data_pipeline.global_batch import batch_sharding
from engine import lm_loss


_IDENTITY = {'min': jnp.inf, 'max': -jnp.inf}


def combine(a, b):
  """Adds aux sums across microbatches; keys ending in _min / _max take the extreme."""
  out = {}
  for k in a:
    kind = k.rsplit('_', 1)[-1]
    out[k] = (jnp.minimum(a[k], b[k]) if kind == 'min' else
              jnp.maximum(a[k], b[k]) if kind == 'max' else a[k] + b[k])
  return out


def accumulate(loss_sums, params, frozen, batch, microbatches, mesh):
  """(gradient of the summed objective, summed aux dict) over `microbatches` slices.
  Aux keys ending in _min / _max are extremes, not sums (never divided by count)."""
  grad_fn = jax.value_and_grad(loss_sums, has_aux=True)
  if microbatches == 1:
    (_, sums), grads = grad_fn(params, frozen, batch)
    return grads, sums

  def split(x):
    x = x.reshape((microbatches, x.shape[0] // microbatches) + x.shape[1:])
    return jax.lax.with_sharding_constraint(
        x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            None, *batch_sharding(mesh).spec)))

  def body(carry, micro):
    grads, sums = carry
    (_, msums), mgrads = grad_fn(params, frozen, micro)
    return (jax.tree.map(jnp.add, grads, mgrads), combine(sums, msums)), None

  micro_batches = jax.tree.map(split, batch)
  first = jax.tree.map(lambda x: x[0], micro_batches)
  sums_shape = jax.eval_shape(lambda: loss_sums(params, frozen, first)[1])
  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  zero_sums = {k: jnp.full(v.shape, _IDENTITY.get(k.rsplit('_', 1)[-1], 0.0), jnp.float32)
               for k, v in sums_shape.items()}
  (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums), micro_batches)
  return grads, sums


def update_fn(loss_sums, tx, schedule, mesh, microbatches):
  """step(state, frozen, batch) -> (state, metrics), not yet jitted.

  Metrics: every aux sum divided by `count` (so `loss` is the mean), plus
  `grad_norm`, `lr` and `tokens` (the count).
  """
  def step(state, frozen, batch):
    grads, sums = accumulate(loss_sums, state['params'], frozen, batch, microbatches, mesh)
    denom = jnp.maximum(sums['count'], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = {k: v if k.endswith(('_min', '_max')) else v / denom
               for k, v in sums.items() if k != 'count'}
    metrics.update(grad_norm=optax.global_norm(grads), lr=schedule(state['step']),
                   tokens=sums['count'])
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics
  return step


def make_step(loss_sums, tx, schedule, shardings, mesh, microbatches, frozen_shardings=None):
  """Jitted step(state, frozen, batch) with explicit shardings; the state is donated."""
  return with_mesh(mesh, jax.jit(
      update_fn(loss_sums, tx, schedule, mesh, microbatches),
      in_shardings=(shardings, frozen_shardings, batch_sharding(mesh)),
      out_shardings=(shardings, None), donate_argnums=0))


def make_train_step(spec, tx, schedule, shardings, train_cfg):
  """The next-token step over the whole model: step(state, batch)."""
  loss_sums = lm_loss.next_token_loss(
      lambda params, _, batch: spec.apply(params, batch['inputs'], batch['positions'],
                                          batch['segment_ids']), train_cfg.z_loss)
  step = update_fn(loss_sums, tx, schedule, spec.mesh, train_cfg.microbatches)
  return with_mesh(spec.mesh, jax.jit(
      lambda state, batch: step(state, {}, batch),
      in_shardings=(shardings, batch_sharding(spec.mesh)), out_shardings=(shardings, None),
      donate_argnums=0))


def with_mesh(mesh, jitted):
  """Calls `jitted` with the mesh set, so activation constraints apply when tracing."""
  def call(*args):
    with jax.set_mesh(mesh):
      return jitted(*args)
  call.jitted = jitted  # for lowering (the bench's profile reads the optimized HLO)
  return call


def make_eval_step(apply_fn, params_shardings, frozen_shardings, mesh):
  """evaluate(params, frozen, batch) -> (ce sum, count) over weighted targets."""
  def evaluate(params, frozen, batch):
    logits = apply_fn(params, frozen, batch)
    ce, _, count = lm_loss.token_loss_sums(logits, batch['targets'], lm_loss.loss_weights(batch),
                                           0.0)
    return ce, count

  return with_mesh(mesh, jax.jit(
      evaluate, in_shardings=(params_shardings, frozen_shardings, batch_sharding(mesh))))
