"""LoRA as a transformation of the params tree: W' = W + (alpha / rank) · A·B.

The model code never changes: a stage merges adapters into the frozen base
inside its jitted step (or once, for eval/generate/export). For a weight of
shape (*in, *out), A is (*in, rank) and B is (rank, *out), so A·B is a
`tensordot` with W's own shape and logical axes: adapters are sharded like the
weights they adapt. A is random and B is zero, so step 0 equals the base exactly.
"""
import math

import jax
import jax.numpy as jnp

from configs.errors import UserError

# Every linear layer of a block, with how many leading axes are its input.
TARGETS = {'wq': 1, 'wk': 1, 'wv': 1, 'wo': 2, 'w_gate': 1, 'w_up': 1, 'w_down': 1}


def target_paths(params, targets):
  """[(block, module, name)] of the params that get adapters."""
  unknown = sorted(set(targets) - set(TARGETS))
  if unknown or not targets:
    raise UserError(f'unknown LoRA target(s) {unknown or "(none)"} in sft.lora_targets; choose '
                    f'from {", ".join(TARGETS)}')
  return [(block, module, name) for block in sorted(params) if block.startswith('block_')
          for module in sorted(params[block]) if isinstance(params[block][module], dict)
          for name in sorted(params[block][module]) if name in targets]


def _split(shape, name):
  n_in = TARGETS[name]
  return shape[:n_in], shape[n_in:]


def check_rank(abstract_params, targets, rank):
  for block, module, name in target_paths(abstract_params, targets):
    shape_in, shape_out = _split(abstract_params[block][module][name].shape, name)
    largest = min(math.prod(shape_in), math.prod(shape_out))
    if not 0 < rank <= largest:
      raise UserError(f'sft.lora_rank={rank} must be in 1..{largest} (the smaller side of '
                      f'{block}.{module}.{name}); choose a rank in that range')


def _tree(paths, leaf):
  tree = {}
  for block, module, name in paths:
    tree.setdefault(block, {}).setdefault(module, {})[name] = leaf(block, module, name)
  return tree


def init_adapters(key, abstract_params, targets, rank):
  """{'block_i': {module: {name: {'a', 'b'}}}} in the params' dtype."""
  paths = target_paths(abstract_params, targets)
  keys = dict(zip(paths, jax.random.split(key, len(paths))))

  def leaf(block, module, name):
    w = abstract_params[block][module][name]
    shape_in, shape_out = _split(w.shape, name)
    std = 1.0 / math.sqrt(math.prod(shape_in))  # A·x keeps the scale of x
    return {'a': jax.random.normal(keys[(block, module, name)], (*shape_in, rank), w.dtype) * std,
            'b': jnp.zeros((rank, *shape_out), w.dtype)}
  return _tree(paths, leaf)


def adapter_axes(param_axes, targets, rank_axis=None):
  """Logical axes of the adapters, from those of the weights they adapt."""
  def leaf(block, module, name):
    axes = param_axes[block][module][name]
    axes_in, axes_out = axes[:TARGETS[name]], axes[TARGETS[name]:]
    return {'a': (*axes_in, rank_axis), 'b': (rank_axis, *axes_out)}
  return _tree(target_paths(param_axes, targets), leaf)


def merge(params, adapters, scale):
  """The base params with every adapted weight replaced by W + scale · A·B."""
  merged = jax.tree.map(lambda x: x, params)  # new dict structure; arrays shared
  for block, modules in adapters.items():
    for module, names in modules.items():
      for name, ab in names.items():
        w = params[block][module][name]
        delta = jnp.tensordot(ab['a'], ab['b'], axes=1)
        merged[block][module][name] = (w + scale * delta).astype(w.dtype)
  return merged


def count(tree):
  return sum(int(x.size) for x in jax.tree.leaves(tree))
