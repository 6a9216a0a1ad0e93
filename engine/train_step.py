"""Loss and the jitted train step (gradient accumulation with lax.scan)."""
import functools

import jax
import jax.numpy as jnp
import optax

from data_pipeline.global_batch import batch_sharding


def token_loss_sums(logits, targets, segment_ids, z_loss):
  """Sums over real (segment id > 0) target tokens: (ce, z-loss term, count)."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  weights = (segment_ids > 0).astype(jnp.float32)
  ce = jnp.sum((log_z - target_logit) * weights)
  z = z_loss * jnp.sum(jnp.square(log_z) * weights)
  return ce, z, jnp.sum(weights)


def _loss_sums(spec, z_loss, params, batch):
  logits = spec.apply(params, batch['inputs'], batch['positions'], batch['segment_ids'])
  ce, z, count = token_loss_sums(logits, batch['targets'], batch['segment_ids'], z_loss)
  return ce + z, (ce, count)


def gradients(spec, params, batch, microbatches, z_loss):
  """Gradient of the summed loss, the summed CE and the token count.

  Sums (not means) per microbatch, divided once at the end, so k microbatches
  give the same update as one batch of k times the rows.
  """
  grad_fn = jax.value_and_grad(functools.partial(_loss_sums, spec, z_loss), has_aux=True)
  if microbatches == 1:
    (_, (ce, count)), grads = grad_fn(params, batch)
    return grads, ce, count

  def split(x):
    x = x.reshape((microbatches, x.shape[0] // microbatches) + x.shape[1:])
    return jax.lax.with_sharding_constraint(
        x, jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec(
            None, *batch_sharding(spec.mesh).spec)))

  def body(carry, micro):
    grads, ce, count = carry
    (_, (mce, mcount)), mgrads = grad_fn(params, micro)
    return (jax.tree.map(jnp.add, grads, mgrads), ce + mce, count + mcount), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  (grads, ce, count), _ = jax.lax.scan(body, init, jax.tree.map(split, batch))
  return grads, ce, count


def make_train_step(spec, tx, schedule, shardings, train_cfg):
  def step(state, batch):
    grads, ce, count = gradients(spec, state['params'], batch, train_cfg.microbatches,
                                 train_cfg.z_loss)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = {'loss': ce / denom, 'grad_norm': optax.global_norm(grads),
               'lr': schedule(state['step']), 'tokens': count}
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics

  return with_mesh(spec.mesh, jax.jit(
      step, in_shardings=(shardings, batch_sharding(spec.mesh)),
      out_shardings=(shardings, None), donate_argnums=0))


def with_mesh(mesh, jitted):
  """Calls `jitted` with the mesh set, so activation constraints apply when tracing."""
  def call(*args):
    with jax.set_mesh(mesh):
      return jitted(*args)
  call.jitted = jitted  # for lowering (the bench's profile reads the optimized HLO)
  return call


def make_eval_step(spec, shardings):
  def evaluate(params, batch):
    logits = spec.apply(params, batch['inputs'], batch['positions'], batch['segment_ids'])
    ce, _, count = token_loss_sums(logits, batch['targets'], batch['segment_ids'], 0.0)
    return ce, count

  return with_mesh(spec.mesh, jax.jit(
      evaluate, in_shardings=(shardings['params'], batch_sharding(spec.mesh))))
