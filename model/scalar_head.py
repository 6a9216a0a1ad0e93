"""A scalar head on the final hidden states: the reward model's score (and, later,
the critic's value), read at the last real token of each sequence.

`last_token_index` is the one place that decides where a sequence ends: for
every segment of a (possibly packed, right-padded) row, the position of its last
token. Off-by-one here is the classic RLHF bug, so it is computed from the
segment ids alone and tested with padding, packing and truncation.
"""
import jax.numpy as jnp


def init(d_model, dtype=jnp.float32):
  # Zero: every response scores 0 at step 0, so the first updates come from the data.
  return {'w': jnp.zeros((d_model,), dtype), 'b': jnp.zeros((), dtype)}


def axes():
  return {'w': ('embed',), 'b': ()}


def shardings(mesh):
  from jax.sharding import NamedSharding, PartitionSpec
  from model import partitioning
  return {'w': NamedSharding(mesh, partitioning.spec(('embed',))),
          'b': NamedSharding(mesh, PartitionSpec())}


def last_token_index(segment_ids, num_segments):
  """(B, num_segments) positions of each segment's last token; -1 for absent ones.

  Segment s (1-based) of row b ends at the largest t with segment_ids[b, t] == s.
  """
  t = segment_ids.shape[1]
  positions = jnp.arange(t, dtype=jnp.int32)
  ids = jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)
  is_seg = segment_ids[:, None, :] == ids[None, :, None]  # (B, S, T)
  return jnp.max(jnp.where(is_seg, positions, -1), axis=-1)


def scores(head, hidden, segment_ids, num_segments=1):
  """(B, num_segments) float32 scores: w·h + b at each segment's last token."""
  index = last_token_index(segment_ids, num_segments)
  h = jnp.take_along_axis(hidden, jnp.maximum(index, 0)[..., None], axis=1)  # (B, S, d)
  values = jnp.einsum('bsd,d->bs', h.astype(jnp.float32), head['w'].astype(jnp.float32))
  return jnp.where(index >= 0, values + head['b'].astype(jnp.float32), 0.0)
