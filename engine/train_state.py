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

  def apply(self, params, tokens, positions, segment_ids):
    return nnx.merge(self.graphdef, params)(tokens, positions, segment_ids)

  def init_params(self, key):
    model = transformer.Transformer(self.cfg, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def state_shardings(spec, tx, abstract_state):
  replicated = NamedSharding(spec.mesh, PartitionSpec())
  opt = optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_state['opt_state'], spec.param_shardings,
      transform_non_params=lambda _: replicated)
  return {'step': replicated, 'params': spec.param_shardings, 'opt_state': opt}


def _init_fn(spec, tx):
  def init(key):
    params = spec.init_params(key)
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  return init


def create_train_state(spec, tx, seed):
  """Initialises on the mesh: each device only ever holds its own shards."""
  _, shardings = abstract_train_state(spec, tx)
  return jax.jit(_init_fn(spec, tx), out_shardings=shardings)(jax.random.key(seed)), shardings


def abstract_train_state(spec, tx):
  """ShapeDtypeStructs carrying shardings: the restore target for Orbax."""
  abstract = jax.eval_shape(_init_fn(spec, tx), jax.random.key(0))
  shardings = state_shardings(spec, tx, abstract)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings), shardings
