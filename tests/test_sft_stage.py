"""`run.py sft` as a user runs it: full, LoRA and prompt tuning from a pretrain
workdir, what each saves, and a bitwise resume after SIGKILL."""
import json
import os

import numpy as np
import pytest

from tests.cli_helpers import file_hashes, fresh_workdir, read_records, restore_state, run_cli
from tests.cli_helpers import kill_at_checkpoint

pytestmark = pytest.mark.slow
SFT = ['--config=configs/sft_tiny.py', '--config.train.batch_size=4',
       '--config.train.eval_batches=1', '--config.train.eval_every=0',
       '--config.train.peak_tflops=1']
STEPS = 6
ADAPTED = ('wk', 'wo', 'wq', 'wv')
MLP_ADAPTED = ('w_down', 'w_gate', 'w_up')


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)


def _evals(workdir):
  return {r['step']: r for r in read_records(workdir) if 'eval_loss' in r}


def _losses(workdir):
  return {r['step']: r['loss'] for r in read_records(workdir) if 'loss' in r}


def _leaves(tree):
  import jax
  return jax.tree_util.tree_leaves_with_path(tree)


@pytest.fixture(scope='module')
def pretrained(tiny_workdir, tmp_path_factory):
  p = fresh_workdir(tiny_workdir, tmp_path_factory.mktemp('sft_stage') / 'pretrain')
  result = run_cli('pretrain', '--config=configs/tiny.py', f'--workdir={p}',
                   '--config.train.steps=20', '--config.train.eval_every=0',
                   '--config.checkpoint.save_every_steps=20', '--config.train.peak_tflops=1')
  assert result.returncode == 0, result.stderr[-2000:]
  return p


@pytest.fixture(scope='module')
def runs(pretrained, tmp_path_factory):
  """One short SFT run per method, from the same pretrain workdir."""
  root = tmp_path_factory.mktemp('sft_runs')
  before = file_hashes(pretrained)
  out = {}
  for method in ('full', 'lora', 'prompt'):
    workdir = root / method
    result = run_cli('sft', *SFT, f'--workdir={workdir}', f'--init_from={pretrained}',
                     f'--config.sft.method={method}', f'--config.train.steps={STEPS}')
    out[method] = (workdir, result)
  return {'runs': out, 'before': before, 'after': file_hashes(pretrained),
          'pretrained': pretrained}


@pytest.mark.parametrize('method', ['full', 'lora', 'prompt'])
def test_each_method_runs_and_evaluates_at_start_and_end(runs, method):
  workdir, result = runs['runs'][method]
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'sft: {method}, ' in result.stdout
  evals = _evals(workdir)
  assert sorted(evals) == [0, STEPS]
  for record in evals.values():
    assert np.isfinite(record['eval_loss']) and record['eval_tokens'] > 0
    assert 'pretrain_loss' in record  # the pretrain workdir's validation split is measured
  # Six steps at lr 1e-3 lower the held-out assistant loss.
  assert evals[STEPS]['eval_loss'] < evals[0]['eval_loss']
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                if d.isdigit()) == [STEPS]
  assert os.path.isfile(os.path.join(workdir, 'config.json'))
  assert os.path.isfile(os.path.join(workdir, 'tokenizer', 'tokenizer.model'))
  assert _losses(workdir)[STEPS] > 0
  assert f'held-out assistant loss {evals[STEPS]["eval_loss"]:.4f}' in result.stdout


def test_base_checkpoint_is_never_written(runs):
  assert runs['before'] == runs['after']
  assert any(k.startswith('checkpoints/20/') for k in runs['before'])


def test_full_and_lora_start_from_the_same_model(runs):
  full, lora = (_evals(runs['runs'][m][0]) for m in ('full', 'lora'))
  # LoRA's B is zero at step 0: the merged model is the base, bitwise.
  assert full[0]['eval_loss'] == lora[0]['eval_loss']
  assert full[0]['pretrain_loss'] == lora[0]['pretrain_loss']
  assert full[0]['eval_tokens'] == lora[0]['eval_tokens']
  # They diverge once trained.
  assert full[STEPS]['eval_loss'] != lora[STEPS]['eval_loss']


def test_lora_checkpoint_holds_only_adapters(runs):
  lora_dir = runs['runs']['lora'][0]
  full_dir = runs['runs']['full'][0]
  state = restore_state(lora_dir, STEPS)
  params = state['params']
  assert sorted(params) == ['block_0', 'block_1']
  for block in params.values():
    assert sorted(block) == ['attn', 'mlp']
    assert sorted(block['attn']) == sorted(ADAPTED)
    assert sorted(block['mlp']) == sorted(MLP_ADAPTED)
    for names in block.values():
      for ab in names.values():
        assert sorted(ab) == ['a', 'b']
        assert ab['a'].shape[-1] == 8 and ab['b'].shape[0] == 8  # sft_tiny's lora_rank
        assert np.abs(ab['b']).max() > 0  # trained away from zero
  assert params['block_0']['attn']['wq']['a'].shape == (128, 8)
  assert params['block_0']['attn']['wo']['a'].shape == (4, 32, 8)
  # No base weight anywhere in the saved state (params or optimizer).
  paths = ['/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
           for path, _ in _leaves(state)]
  assert not any(name in p for p in paths for name in ('embed', 'lm_head', 'norm'))
  n_params = sum(x.size for _, x in _leaves(params))
  assert n_params == 38912
  full_params = restore_state(full_dir, STEPS)['params']
  assert sum(x.size for _, x in _leaves(full_params)) > 20 * n_params
  lora_bytes = _dir_bytes(os.path.join(lora_dir, 'checkpoints', str(STEPS)))
  full_bytes = _dir_bytes(os.path.join(full_dir, 'checkpoints', str(STEPS)))
  assert lora_bytes * 8 < full_bytes, (lora_bytes, full_bytes)
  # The metadata names its base checkpoint, so eval/generate can merge.
  from engine import restore_params
  meta = restore_params.read_meta(os.path.join(lora_dir, 'checkpoints'), STEPS)
  assert meta['adapter'] == 'lora' and meta['method'] == 'lora'
  base_dir = os.path.join(str(runs['pretrained']), 'checkpoints')
  assert meta['base'] == {'directory': base_dir, 'step': 20,
                          'fingerprint': restore_params.fingerprint(base_dir, 20)}
  assert meta['lora']['rank'] == 8 and meta['lora']['scale'] == 16.0 / 8


def test_prompt_checkpoint_holds_only_the_soft_prompt(runs):
  workdir = runs['runs']['prompt'][0]
  params = restore_state(workdir, STEPS)['params']
  assert list(params) == ['prompt']
  assert params['prompt'].shape == (16, 128)  # num_virtual_tokens x d_model
  evals = _evals(workdir)
  # The model itself is frozen: the pretraining validation loss does not move.
  assert evals[0]['pretrain_loss'] == evals[STEPS]['pretrain_loss']
  lora_bytes = _dir_bytes(os.path.join(runs['runs']['lora'][0], 'checkpoints', str(STEPS)))
  assert _dir_bytes(os.path.join(workdir, 'checkpoints', str(STEPS))) < lora_bytes


def test_saved_adapters_load_as_the_merged_model(runs):
  """eval/generate/export read an SFT checkpoint through restore_params.model_params:
  LoRA = its base + scale·A·B, prompt = its base and the saved soft prompt."""
  import jax
  from configs import sft_tiny
  from engine import mesh as mesh_lib
  from engine import restore_params
  from engine import train_state
  from model import lora
  config = sft_tiny.get_config()
  spec = train_state.ModelSpec(config.model, mesh_lib.make_mesh(config.mesh, jax.devices()[:1]))
  base_dir = os.path.join(str(runs['pretrained']), 'checkpoints')
  base, prompt = restore_params.model_params(base_dir, 20, restore_params.read_meta(base_dir, 20),
                                             spec)
  assert prompt is None
  base = jax.device_get(base)
  lora_ckpts = os.path.join(runs['runs']['lora'][0], 'checkpoints')
  merged, prompt = restore_params.model_params(
      lora_ckpts, STEPS, restore_params.read_meta(lora_ckpts, STEPS), spec)
  assert prompt is None
  adapters = restore_state(runs['runs']['lora'][0], STEPS)['params']
  want = jax.device_get(lora.merge(base, adapters, 16.0 / 8))
  got = jax.device_get(merged)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, x), y in zip(_leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7, err_msg=str(path))
  assert not np.array_equal(got['block_0']['attn']['wq'], base['block_0']['attn']['wq'])
  np.testing.assert_array_equal(got['embed'], base['embed'])
  prompt_ckpts = os.path.join(runs['runs']['prompt'][0], 'checkpoints')
  params, prompt = restore_params.model_params(
      prompt_ckpts, STEPS, restore_params.read_meta(prompt_ckpts, STEPS), spec)
  for x, y in zip(jax.tree.leaves(base), jax.tree.leaves(jax.device_get(params))):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(np.asarray(prompt),
                                restore_state(runs['runs']['prompt'][0], STEPS)['params']['prompt'])


def test_init_from_a_step_directory_or_a_prompt_checkpoint(runs):
  from posttrain import init_from
  p = str(runs['pretrained'])
  by_workdir = init_from.resolve(p)
  by_step = init_from.resolve(os.path.join(p, 'checkpoints', '20'))
  assert (by_workdir.directory, by_workdir.step, by_workdir.workdir) == (
      by_step.directory, by_step.step, by_step.workdir) == (
          os.path.join(p, 'checkpoints'), 20, p)
  assert by_workdir.tokenizer.fingerprint == by_step.tokenizer.fingerprint
  # A prompt-tuned checkpoint is not a model to fine-tune further.
  target = runs['runs']['prompt'][0].parent / 'from_prompt'
  result = run_cli('sft', *SFT, f'--workdir={target}',
                   f'--init_from={runs["runs"]["prompt"][0]}', '--config.train.steps=2')
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'is a prompt-tuned checkpoint' in last, last
  assert not target.exists()


def test_sft_sigkill_then_resume_is_bitwise_identical(pretrained, tmp_path):
  args = [*SFT, f'--init_from={pretrained}', '--config.sft.method=lora',
          '--config.train.batch_size=8', '--config.train.steps=30',
          '--config.train.log_every=1', '--config.checkpoint.save_every_steps=10',
          '--config.checkpoint.keep=10']
  straight = tmp_path / 'straight'
  result = run_cli('sft', *args, f'--workdir={straight}')
  assert result.returncode == 0, result.stderr[-2000:]
  killed = tmp_path / 'killed'
  done = kill_at_checkpoint('sft', [*args, f'--workdir={killed}'], killed, 10)
  assert 30 not in done  # killed mid-run
  resumed = run_cli('sft', *args, f'--workdir={killed}')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from step' in resumed.stdout
  a, b = _losses(straight), _losses(killed)  # later lines (the resumed run's) win
  assert sorted(a) == list(range(1, 31))
  assert [a[s] for s in range(1, 31)] == [b[s] for s in range(1, 31)]
  sa, sb = restore_state(straight, 30), restore_state(killed, 30)
  la, lb = _leaves(sa), _leaves(sb)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=str(path))
  assert _evals(straight)[30]['eval_loss'] == _evals(killed)[30]['eval_loss']
  with open(straight / 'checkpoints' / '30' / 'data' / 'process_0-of-1.json') as f:
    data_a = json.load(f)
  with open(killed / 'checkpoints' / '30' / 'data' / 'process_0-of-1.json') as f:
    data_b = json.load(f)
  assert data_a == data_b
