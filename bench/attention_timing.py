"""The attention core alone (no projections), forward + backward, at the
config's shapes, summed over its layers: the part of the step where a fused
kernel (PyTorch's SDPA) and XLA's composition of small ops differ most."""
import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import median_seconds
from model import attention
from model import transformer


def measure(config, steps=5):
  m = transformer.resolve_auto_dtype(config.model)
  b, t, hd = config.train.batch_size, config.data.seq_len, transformer.head_dim(m)
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(b, t, m.num_heads, hd)), jnp.dtype(m.dtype))
  k, v, out_grad = (jnp.asarray(rng.normal(size=(b, t, heads, hd)), jnp.dtype(m.dtype))
                    for heads in (m.num_kv_heads, m.num_kv_heads, m.num_heads))
  segments = jnp.ones((b, t), jnp.int32)
  kind = attention.resolve_kind(m.attention, m.dtype, hd)
  mask = attention.self_attention_inputs(segments, kind)  # cudnn: offsets, not a mask

  def loss(q, k, v):
    out = attention.attend(q, k, v, mask, kind, m.attention_block)
    return jnp.sum(out * out_grad)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  seconds = median_seconds(lambda: jax.block_until_ready(grads(q, k, v)), steps)
  return {'attention_s': seconds * m.num_layers}
