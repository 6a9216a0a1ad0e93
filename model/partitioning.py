"""Logical axis names → mesh axes: the one table that decides all sharding.

Params and activations name their dimensions with logical axes; this table maps
them to the mesh axes `data`, `fsdp`, `tensor`. Changing the parallelism of a
run means changing the mesh shape, never the model code.
"""
import jax
from jax.sharding import PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH = ('data', 'fsdp')  # batch rows are split over every data-parallel axis

RULES = {
    # parameters
    'vocab': 'tensor',
    'embed': 'fsdp',  # ZeRO-3: each param is split along d_model over fsdp
    'heads': 'tensor',
    'kv_heads': 'tensor',
    'head_dim': None,
    'mlp': 'tensor',
    'layers': None,
    # activations
    'batch': BATCH,
    'length': None,
    'act_embed': None,  # activations keep d_model whole; fsdp splits their rows
    'act_heads': 'tensor',
    'act_kv_heads': 'tensor',
    'act_mlp': 'tensor',
    'act_vocab': 'tensor',
}


def spec(logical_axes):
  """PartitionSpec for a tuple of logical names (None = replicated dim)."""
  return PartitionSpec(*(RULES[name] if name else None for name in logical_axes))


def constrain(x, *logical_axes):
  """Pins an activation's sharding when a mesh is set (no-op otherwise)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, spec(logical_axes))


def param_specs(logical_tree):
  """Tree of logical-axes tuples → tree of PartitionSpecs."""
  return jax.tree.map(spec, logical_tree, is_leaf=lambda x: isinstance(x, tuple))
