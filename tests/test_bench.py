"""The benchmark's arithmetic (no timing is asserted anywhere)."""
import pytest

from configs import small, tiny
from model import transformer
from engine import flops


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


def test_profile_counts_matmul_flops_from_optimized_hlo():
  import jax
  import jax.numpy as jnp
  from bench import step_profile
  a, b, c = jnp.ones((32, 16)), jnp.ones((16, 8)), jnp.ones((4, 32, 16))
  compiled = jax.jit(lambda a, b, c: (jnp.tanh(a @ b), jnp.einsum('btd,sd->bts', c, a)))
  hlo = step_profile.OptimizedHlo(compiled.lower(a, b, c).compile().as_text())
  found = sorted(f for name in hlo.lines for f, _ in hlo.matmuls(name))
  # a@b: 2*32*16*8; the einsum: 2*(4*32)*32*16 (hand counts)
  assert found == sorted([2 * 32 * 16 * 8, 2 * 4 * 32 * 32 * 16])


@pytest.mark.parametrize('microbatches', [1, 4])
def test_profile_sees_every_matmul_of_the_train_step(tmp_path, microbatches):
  """Traced matmul FLOPs = 6·N·tokens + the blocked attention's exact work,
  per device (the tests' mesh splits the batch over 8 simulated devices), also when
  the microbatches' matmuls run inside a loop body, once per microbatch."""
  import jax
  from bench import step_profile
  cfg = tiny.get_config()
  cfg.train.optimizer = 'adamw'  # Muon's Newton-Schulz iterations are matmuls of their own
  cfg.train.microbatches = microbatches
  cfg.train.batch_size = 8 * microbatches  # each microbatch: one row per simulated device
  m, b, t = cfg.model, cfg.train.batch_size, cfg.data.seq_len
  report = step_profile.profile(cfg, str(tmp_path / 'trace'), steps=1)
  hd, block = m.d_model // m.num_heads, m.attention_block
  # query block i sees (i+1)*block keys; 12*hd FLOPs per score (QK, AV and 4 backward dots)
  scores = b * m.num_heads * block * sum(block * (i + 1) for i in range(t // block))
  expected = (6 * flops.matmul_params(m) * b * t + 12 * hd * scores * m.num_layers) / jax.device_count()
  traced = sum(x['gflops'] for x in report['matmuls']) * 1e9
  assert abs(traced - expected) <= 1e-6 * expected
  assert report['other'] and all(o['seconds'] >= 0 for o in report['other'])


@pytest.mark.parametrize('preset', [tiny, small])
def test_matmul_skeleton_does_exactly_the_models_matmul_flops(preset):
  """Its weights are the model's matmul params, so 6·N·tokens is its whole work."""
  from bench import matmul_skeleton
  cfg = preset.get_config()
  tokens = cfg.train.batch_size * cfg.data.seq_len
  assert matmul_skeleton.matmul_flops(cfg) == 6 * flops.matmul_params(cfg.model) * tokens


def test_matmul_skeleton_is_the_same_function_in_torch():
  torch = pytest.importorskip('torch')
  import jax.numpy as jnp
  import numpy as np
  from bench import matmul_skeleton
  from bench import torch_reference
  cfg = tiny.get_config()
  cfg.train.batch_size, cfg.data.seq_len = 2, 8
  x, weights = matmul_skeleton.make_inputs(cfg)
  ours = np.asarray(matmul_skeleton.forward(
      jnp.asarray(x), [jnp.asarray(w) for w in weights], cfg.model.num_layers, jnp.matmul,
      matmul_skeleton._tile))
  theirs = matmul_skeleton.forward(torch.tensor(x), [torch.tensor(w) for w in weights],
                                   cfg.model.num_layers, torch.matmul,
                                   torch_reference.tile).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_microbatch_timing_measures_every_count_in_alternating_rounds():
  from bench import microbatch_timing
  cfg = tiny.get_config()
  cfg.data.seq_len = 32
  rows = microbatch_timing.measure(cfg, [1, 2], rounds=2, steps=1)
  assert [(r['microbatches'], r['round']) for r in rows] == [(1, 0), (2, 0), (1, 1), (2, 1)]
  assert all(r['tokens_per_s'] > 0 and 0 < r['mfu'] and r['step_s'] > 0 for r in rows)


def test_side_by_side_profile_finds_every_part_of_both_steps(tmp_path):
  """Each category holds time on both sides (matmuls, attention, norms, loss and the
  optimizer are all found in the trace), and each side adds up to its step time."""
  pytest.importorskip('torch')
  from bench import profile_side_by_side
  cfg = tiny.get_config()
  cfg.train.batch_size, cfg.train.microbatches = 8, 1  # the test mesh has 8 devices
  cfg.train.optimizer = 'adamw'  # the peer's update
  report = profile_side_by_side.side_by_side(cfg, str(tmp_path / 'trace'), steps=1)
  for side in ('ours', 'torch_compile'):
    parts = report[side]
    assert sum(parts.values()) == pytest.approx(report[f'{side}_step_s'], rel=1e-9)
    for category in ('matmul', 'attention', 'norm/activation', 'loss', 'optimizer'):
      assert parts[category] > 0, (side, category, parts)
  table = profile_side_by_side.format_table(report)
  assert table.count('\n') == len(profile_side_by_side.CATEGORIES) + 2


def test_speedrun_sweep_scores_out_of_domain_text_the_corpus_never_had(tmp_path):
  """The OOD files hold every conversation of the chosen instruction tasks, and none
  of their text is a document of the pretraining corpus."""
  import json
  import os
  from bench import speedrun_sweep
  paths = speedrun_sweep.ood_texts(str(tmp_path))
  corpus = os.path.join(speedrun_sweep.REPO, 'data_pipeline', 'corpus')
  documents = set()
  for name in os.listdir(corpus):
    if name.endswith('.jsonl'):
      with open(os.path.join(corpus, name), encoding='utf-8') as f:
        documents |= {json.loads(line)['text'] for line in f}
  expected = {'en': 0, 'zh': 0}
  for name in os.listdir(speedrun_sweep.INSTRUCTIONS):
    if name.endswith('.jsonl'):
      with open(os.path.join(speedrun_sweep.INSTRUCTIONS, name), encoding='utf-8') as f:
        for record in map(json.loads, f):
          for lang, tasks in speedrun_sweep.OOD_TASKS.items():
            expected[lang] += record['task'] in tasks
  for lang, path in paths.items():
    with open(path, encoding='utf-8') as f:
      texts = [json.loads(line)['text'] for line in f]
    assert len(texts) == expected[lang] > 100
    assert not documents & set(texts)
  assert speedrun_sweep.RECIPES['now'] == []  # the preset itself


def test_with_torch_refuses_an_optimizer_the_peer_does_not_run(tmp_path):
  from tests.cli_helpers import run_cli
  result = run_cli('bench', '--config=configs/tiny.py', '--with_torch', f'--workdir={tmp_path}')
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'add --config.train.optimizer=adamw' in last
  assert "Traceback" not in result.stderr
