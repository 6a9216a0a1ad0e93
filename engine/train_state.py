"""The train state {step, params, opt_state}, created directly in its shardings.

Params are a pure dict of arrays (what Orbax saves and optax updates); the
model's graphdef turns them back into a module inside jitted code.
"""
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from model import partitioning
from model import transformer


class ModelSpec:
  """Everything static about a model: graphdef, logical axes, param shardings."""

  def __init__(self, model_cfg, mesh):
    abstract = transformer.abstract_model(model_cfg)
    self.cfg = model_cfg
    self.mesh = mesh
    self.graphdef = nnx.split(abstract)[0]
    self.logical_axes = transformer.logical_axes(abstract)
    self.param_shardings = jax.tree.map(
        lambda axes: NamedSharding(mesh, partitioning.spec(axes)), self.logical_axes,
        is_leaf=lambda x: isinstance(x, tuple))

  def apply(self, params, tokens, positions, segment_ids, soft_prompt=None):
    return nnx.merge(self.graphdef, params)(tokens, positions, segment_ids, soft_prompt)

  def hidden_states(self, params, tokens, positions, segment_ids):
    return nnx.merge(self.graphdef, params).hidden_states(tokens, positions, segment_ids)

  def init_params(self, key):
    model = transformer.Transformer(self.cfg, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def state_shardings(param_shardings, tx, abstract_state, mesh):
  replicated = NamedSharding(mesh, PartitionSpec())
  # A partitioned optimizer (Muon's AdamW half) holds MaskedNode, an empty subtree, where
  # the other half owns the param: it stays as it is, with no sharding of its own.
  masked = lambda x: isinstance(x, optax.MaskedNode)
  opt = optax.tree_map_params(
      tx, lambda leaf, sharding: leaf if masked(leaf) else sharding,
      abstract_state['opt_state'], param_shardings,
      transform_non_params=lambda _: replicated, is_leaf=masked)
  shardings = {'step': replicated, 'params': param_shardings, 'opt_state': opt}
  if 'extra' in abstract_state:  # a stage's own state (RNG key, controllers): replicated
    shardings['extra'] = jax.tree.map(lambda _: replicated, abstract_state['extra'])
  return shardings


def _state_of(params, tx, extra=None):
  state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  if extra is not None:
    state['extra'] = jax.tree.map(jnp.asarray, extra)
  return state


def abstract_state(init_params, param_shardings, tx, mesh, extra=None):
  """(ShapeDtypeStructs carrying shardings, shardings) of the state that
  `init_params(key)` starts: the restore target for Orbax. `extra`: a stage's own
  state beside params and optimizer (initial values), saved and restored with them."""
  abstract = jax.eval_shape(lambda key: _state_of(init_params(key), tx, extra),
                            jax.random.key(0))
  shardings = state_shardings(param_shardings, tx, abstract, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings), shardings


def init_state(init_params, param_shardings, tx, mesh, key, extra=None):
  """(state, shardings), created on the mesh: each device only holds its own shards."""
  _, shardings = abstract_state(init_params, param_shardings, tx, mesh, extra)
  return jax.jit(lambda k: _state_of(init_params(k), tx, extra),
                 out_shardings=shardings)(key), shardings


def state_from_params(params, param_shardings, tx, mesh, extra=None):
  """A step-0 state around given params (fine-tuning starts): fresh optimizer state."""
  _, shardings = abstract_state(lambda _: params, param_shardings, tx, mesh, extra)
  return jax.jit(lambda p: _state_of(p, tx, extra), out_shardings=shardings)(params), shardings


def create_train_state(spec, tx, seed):
  """The whole model's state, initialised from `seed`."""
  return init_state(spec.init_params, spec.param_shardings, tx, spec.mesh, jax.random.key(seed))


def abstract_train_state(spec, tx):
  return abstract_state(spec.init_params, spec.param_shardings, tx, spec.mesh)
