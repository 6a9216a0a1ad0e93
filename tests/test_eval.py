"""`run.py eval`: perplexity against an independent cross-entropy, sliding
windows that count every token once, bits per byte, and bad input."""
import json
import math
import os

import numpy as np
import pytest

from evaluation.evaluate import windows
from tests.cli_helpers import fresh_workdir, run_cli

ARGS = ['--config=configs/tiny.py', '--config.data.seq_len=64', '--config.train.batch_size=8',
        '--config.train.eval_every=0', '--config.train.eval_batches=1',
        '--config.train.peak_tflops=1.0']


@pytest.mark.parametrize('n,seq_len,stride', [(1, 8, 8), (100, 16, 16), (100, 16, 5),
                                              (17, 16, 1), (64, 64, 32)])
def test_windows_score_every_token_exactly_once(n, seq_len, stride):
  ids = np.arange(n + 1)
  scored = []
  for inputs, targets, weights in windows(ids, seq_len, stride):
    assert len(inputs) <= seq_len and np.array_equal(targets, inputs + 1)
    scored += list(targets[weights > 0])
  assert scored == list(range(1, n + 1))


@pytest.fixture(scope='module')
def trained(tiny_workdir, tmp_path_factory):
  workdir = fresh_workdir(tiny_workdir, tmp_path_factory.mktemp('eval') / 'w')
  result = run_cli('pretrain', *ARGS, f'--workdir={workdir}', '--config.train.steps=20')
  assert result.returncode == 0, result.stderr[-2000:]
  return str(workdir)


def _eval_json(*args):
  result = run_cli('eval', *args)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_perplexity_equals_an_independent_cross_entropy(trained, tmp_path):
  import jax
  from flax import nnx
  from configs import tiny
  from engine import restore_params
  texts = ['The answer is 42.', '床前明月光，疑是地上霜。', 'A short line of English text']
  path = tmp_path / 'docs.jsonl'
  path.write_text('\n'.join(json.dumps({'text': t}) for t in texts))
  summary = _eval_json(f'--workdir={trained}', f'--eval_files={path}', '--json')
  # Independent: the model's raw logits, a NumPy log-softmax, every target once.
  model_cfg, params, tok, spec, _, _, _ = restore_params.load(trained, tiny.get_config())
  model = nnx.merge(spec.graphdef, jax.device_get(params))
  nll, count = 0.0, 0
  for text in texts:
    ids = np.asarray([tok.bos_id] + tok.encode(text) + [tok.eos_id])
    t = len(ids) - 1
    logits = np.asarray(model(ids[None, :-1], np.arange(t)[None], np.ones((1, t), np.int32)),
                        np.float64)[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                              keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    nll -= logp[np.arange(t), ids[1:]].sum()
    count += t
  assert summary['tokens'] == count
  assert abs(summary['loss'] - nll / count) < 1e-5 * (nll / count)
  assert abs(summary['perplexity'] - math.exp(nll / count)) < 1e-4 * summary['perplexity']
  total_bytes = sum(len(t.encode()) for t in texts)
  assert abs(summary['bits_per_byte'] - nll / math.log(2) / total_bytes) < 1e-5


def test_stride_counts_every_token_of_a_long_text_once(trained, tmp_path):
  text = ' '.join(f'word{i}' for i in range(400))
  path = tmp_path / 'long.txt'
  path.write_text(text)
  full = _eval_json(f'--workdir={trained}', f'--eval_files={path}', '--seq_len=64', '--json')
  strided = _eval_json(f'--workdir={trained}', f'--eval_files={path}', '--seq_len=64',
                       '--stride=16', '--json')
  from data_pipeline import tokenizer as tokenizer_lib
  tok = tokenizer_lib.load_tokenizer(os.path.join(trained, 'tokenizer', 'tokenizer.model'))
  expected = len(tok.encode(text)) + 1  # targets: the text's tokens and EOS
  assert full['tokens'] == strided['tokens'] == expected
  assert strided['loss'] <= full['loss'] + 0.05  # more context never hurts by much


def test_validation_split_and_per_file_report(trained):
  summary = _eval_json(f'--workdir={trained}', '--max_batches=3', '--json')
  assert list(summary['files']) == ['validation']
  assert summary['tokens'] > 0 and summary['perplexity'] == pytest.approx(
      math.exp(summary['loss']))


def test_eval_user_errors(trained, tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  for args, fragment in [
      ([f'--checkpoint={tmp_path}/nope/12'], 'not a checkpoint'),
      ([f'--eval_files={empty}'], 'holds no text'),
      (['--stride=0'], '--stride=0'),
      (['--step=999'], 'no checkpoint for --step=999'),
  ]:
    result = run_cli('eval', f'--workdir={trained}', *args)
    assert result.returncode == 2, result.stderr[-1500:]
    assert result.stderr.strip().splitlines()[-1].startswith('error: ')
    assert fragment in result.stderr.strip().splitlines()[-1]
  result = run_cli('eval', f'--workdir={tmp_path / "none"}')
  assert result.returncode == 2 and 'no checkpoint in' in result.stderr


def test_int8_weights_are_4x_smaller_and_perplexity_barely_moves(trained):
  full = _eval_json(f'--workdir={trained}', '--max_batches=4', '--json')
  int8 = _eval_json(f'--workdir={trained}', '--max_batches=4', '--quantize=int8', '--json')
  assert int8['linear_weight_bytes_float32'] == full['linear_weight_bytes']
  assert full['linear_weight_bytes'] / int8['linear_weight_bytes'] > 3.8
  # Measured on the README's tiny run (1,000 steps): perplexity 54.8473 → 54.8475.
  assert abs(int8['perplexity'] / full['perplexity'] - 1) < 0.02
  assert int8['loss'] != full['loss']  # the quantized weights were really used


def test_quantize_round_trip_error_is_bounded():
  from model import quantize
  rng = np.random.default_rng(0)
  params = {'block_0': {'attn': {'wo': rng.normal(size=(4, 8, 16)).astype(np.float32)},
                        'mlp': {'w_up': rng.normal(size=(16, 32)).astype(np.float32)},
                        'attn_norm': {'scale': np.ones(16, np.float32)}}}
  q = quantize.quantize(params)
  assert q['block_0']['attn']['wo']['scale'].shape == (1, 1, 16)  # per output channel
  assert q['block_0']['mlp']['w_up']['int8'].dtype == np.int8
  back = quantize.dequantize(q)
  for path in (('attn', 'wo'), ('mlp', 'w_up')):
    w = params['block_0'][path[0]][path[1]]
    scale = q['block_0'][path[0]][path[1]]['scale']
    assert (np.abs(np.asarray(back['block_0'][path[0]][path[1]]) - w) <= scale / 2 + 1e-7).all()
  np.testing.assert_array_equal(back['block_0']['attn_norm']['scale'], 1.0)


def test_eval_refuses_a_tokenizer_the_checkpoint_was_not_trained_with(trained, tmp_path):
  from configs import tiny
  from data_pipeline import documents, embedded
  from data_pipeline import tokenizer as tokenizer_lib
  config = tiny.get_config()
  other = tokenizer_lib.train_tokenizer(  # same vocab size, other corpus
      documents.iter_documents(embedded.VALIDATION_FILES, config.data), config.tokenizer)
  tokenizer_lib.save_tokenizer(other, str(tmp_path / 'other'))
  result = run_cli('eval', f'--workdir={trained}',
                   f'--config.tokenizer.path={tmp_path / "other" / "tokenizer.model"}')
  assert result.returncode == 2
  assert 'not the one this checkpoint was trained with' in result.stderr.splitlines()[-1]
