"""Attention kernel choice and the cuDNN packed kernel's arguments (CPU), plus the
fused kernel against `reference` (GPU only, skipped elsewhere)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.packed_attention_check import check_fused_against_reference, packed_rows
from configs import tiny
from configs.errors import UserError
from model import attention
from model import attention_cudnn
from model import transformer


def test_packed_segments_rebuild_make_mask_on_random_packed_rows():
  rng = np.random.default_rng(0)
  for length, max_docs in ((16, 6), (64, 20), (128, 40)):
    seg = jnp.asarray(packed_rows(rng, 6, length, max_docs))
    index = jnp.broadcast_to(jnp.arange(length), seg.shape)
    expected = attention.make_mask(seg, seg, index, index)
    packed = attention_cudnn.packed_segments(seg, max_segments=max_docs + 2)
    assert not bool(packed['overflow'])
    rebuilt = attention_cudnn.packed_mask(packed['seqlens'], packed['offsets'], length)
    np.testing.assert_array_equal(np.asarray(rebuilt), np.asarray(expected))


def test_packed_segments_lengths_offsets_and_padding_slots():
  seg = jnp.asarray([[1, 1, 1, 2, 2, 0, 0, 0], [3, 3, 3, 3, 3, 3, 3, 3]], jnp.int32)
  packed = attention_cudnn.packed_segments(seg, max_segments=4)
  np.testing.assert_array_equal(packed['seqlens'], [[3, 2, 3, -1], [8, -1, -1, -1]])
  np.testing.assert_array_equal(packed['offsets'], [[0, 3, 5, -1, -1], [0, -1, -1, -1, -1]])
  assert not bool(packed['overflow'])


def test_packed_segments_flags_rows_with_more_documents_than_slots():
  seg = jnp.asarray([[1, 2, 3, 4, 5, 0], [1, 1, 1, 1, 1, 1]], jnp.int32)
  assert bool(attention_cudnn.packed_segments(seg, max_segments=5)['overflow'])
  assert not bool(attention_cudnn.packed_segments(seg, max_segments=6)['overflow'])


def test_auto_is_blocked_on_cpu_and_cudnn_there_is_one_clear_error():
  assert attention.resolve_kind('auto', jnp.float32, 32) == 'blocked'
  assert attention.resolve_kind('xla', jnp.float32, 32) == 'xla'
  with pytest.raises(UserError, match="model.attention='cudnn' cannot run here: .*cpu"):
    attention.resolve_kind('cudnn', jnp.bfloat16, 64)


def test_cudnn_on_cpu_fails_as_one_user_error_when_the_model_runs():
  cfg = tiny.get_config().model
  cfg.attention = 'cudnn'
  model = transformer.Transformer(cfg, rngs=__import__('flax').nnx.Rngs(0))
  tokens = jnp.zeros((1, 16), jnp.int32)
  with pytest.raises(UserError, match='cudnn'):
    model(tokens, jnp.broadcast_to(jnp.arange(16), (1, 16)), jnp.ones((1, 16), jnp.int32))


def test_auto_dtype_is_float32_on_cpu_and_resolved_once_in_the_config():
  cfg = tiny.get_config().model
  assert cfg.dtype == 'auto'
  model = transformer.Transformer(cfg, rngs=__import__('flax').nnx.Rngs(0))
  assert cfg.dtype == 'float32' and model.cfg.dtype == 'float32'
  assert model.embed[...].dtype == jnp.float32
  cfg.dtype = 'bfloat16'  # an explicit choice is kept
  assert transformer.resolve_auto_dtype(cfg).dtype == 'bfloat16'


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs an NVIDIA GPU')
@pytest.mark.parametrize('heads,kv_heads', [(8, 8), (8, 2)])
def test_cudnn_packed_matches_reference_forward_and_gradients(heads, kv_heads):
  errors = check_fused_against_reference(heads=heads, kv_heads=kv_heads)
  assert errors['out'] < 3e-2, errors  # bf16 output, values of order 1
  assert max(errors['dq'], errors['dk'], errors['dv']) < 3e-2, errors  # relative to max


def test_remat_dots_keeps_the_fused_attention_forward_and_the_plain_matmuls():
  policy = transformer.REMAT_POLICIES['dots']

  class Prim:
    def __init__(self, name):
      self.name = name

  assert policy(Prim('dot_product_attention_fwd_wrapper'))
  assert not policy(Prim('exp'))
  x = jax.ShapeDtypeStruct((4, 8), jnp.float32)
  dot = jax.lax.dot_general_p
  assert policy(dot, x, jax.ShapeDtypeStruct((8, 3), jnp.float32),
                dimension_numbers=(((1,), (0,)), ((), ())), precision=None,
                preferred_element_type=None, out_sharding=None)
