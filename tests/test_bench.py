"""The benchmark's arithmetic (no timing is asserted anywhere)."""
import pytest

from configs import small, tiny
from model import transformer
from pretrain import flops


@pytest.mark.parametrize('preset', [tiny, small])
def test_torch_reference_has_our_param_count(preset):
  torch_reference = pytest.importorskip('bench.torch_reference')
  cfg = preset.get_config().model
  assert torch_reference.count_params(cfg) == transformer.count_params(cfg)


def test_torch_reference_computes_the_same_function():
  """Same weights in both → same logits (so the two benches time one model)."""
  torch = pytest.importorskip('torch')
  from bench import torch_reference
  import jax
  import numpy as np
  from flax import nnx
  cfg = tiny.get_config().model
  ours = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
  params = jax.device_get(nnx.to_pure_dict(nnx.state(ours, nnx.Param)))
  theirs = torch_reference.Transformer(cfg)
  with torch.no_grad():
    theirs.embed.weight.copy_(torch.tensor(params['embed']))
    theirs.lm_head.weight.copy_(torch.tensor(params['lm_head'].T))
    theirs.final_norm.scale.copy_(torch.tensor(params['final_norm']['scale']))
    for i, block in enumerate(theirs.blocks):
      p = params[f'block_{i}']
      block.attn_norm.scale.copy_(torch.tensor(p['attn_norm']['scale']))
      block.mlp_norm.scale.copy_(torch.tensor(p['mlp_norm']['scale']))
      for name in ('wq', 'wk', 'wv'):
        w = p['attn'][name]
        getattr(block, name).weight.copy_(torch.tensor(w.reshape(cfg.d_model, -1).T))
      block.wo.weight.copy_(torch.tensor(p['attn']['wo'].reshape(-1, cfg.d_model).T))
      for name in ('w_gate', 'w_up', 'w_down'):
        getattr(block, name).weight.copy_(torch.tensor(p['mlp'][name].T))
  tokens = np.random.default_rng(0).integers(8, cfg.vocab_size, (2, 32)).astype(np.int32)
  expected = np.asarray(ours(tokens, np.arange(32)[None].repeat(2, 0),
                             np.ones((2, 32), np.int32)))
  got = theirs(torch.tensor(tokens, dtype=torch.long)).detach().numpy()
  assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


def test_mfu_arithmetic():
  cfg = small.get_config()
  per_token = flops.train_flops_per_token(cfg.model, cfg.data.seq_len)
  # small: 6 * 16.91M matmul params (embedding excluded, head included) + attention
  matmul = 6 * (6 * (384 * 64 * 24 + 3 * 384 * 1024) + 384 * 8192)
  assert per_token == matmul + 12 * 6 * 6 * 64 * 256 / 2
