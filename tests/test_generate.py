"""KV-cache decoding equals the full forward pass; sampling edge cases; the CLI."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from model import decode
from model import transformer
from tests.cli_helpers import fresh_workdir, run_cli

PROMPT = np.array([[2, 10, 11, 12, 13, 14], [2, 20, 21, 0, 0, 0], [2, 30, 31, 32, 0, 0]],
                  np.int32)
LENGTHS = np.array([6, 3, 4], np.int32)


@pytest.fixture(scope='module')
def model():
  return transformer.Transformer(tiny.get_config().model, rngs=nnx.Rngs(0))


def _generate(model, **kwargs):
  kwargs.setdefault('max_new_tokens', 8)
  return decode.generate(model, jnp.asarray(PROMPT), jnp.asarray(LENGTHS), jax.random.key(0),
                         **kwargs)


def test_cached_logits_equal_full_forward_at_every_step(model):
  tokens, counts, logits = _generate(model, return_logits=True, max_new_tokens=10)
  assert (np.asarray(counts) == 10).all()
  for row in range(len(PROMPT)):
    seq = np.concatenate([PROMPT[row, :LENGTHS[row]], np.asarray(tokens[row])])
    full = model(seq[None], np.arange(len(seq))[None], np.ones((1, len(seq)), np.int32))
    expected = np.asarray(full[0, LENGTHS[row] - 1:LENGTHS[row] - 1 + 10])
    np.testing.assert_allclose(np.asarray(logits[row]), expected, atol=2e-5, rtol=1e-5)
    # greedy: each token is the argmax of the logits that produced it
    np.testing.assert_array_equal(np.asarray(tokens[row]), expected.argmax(-1))


def test_greedy_is_deterministic_and_limits_equal_greedy(model):
  greedy, _ = _generate(model, temperature=0.0)
  again, _ = _generate(model, temperature=0.0)
  np.testing.assert_array_equal(greedy, again)
  for kwargs in [{'temperature': 1e-7}, {'temperature': 1.0, 'top_k': 1},
                 {'temperature': 1.0, 'top_p': 1e-6}]:
    np.testing.assert_array_equal(_generate(model, **kwargs)[0], greedy)
  sampled, _ = _generate(model, temperature=1.0)
  assert not np.array_equal(sampled, greedy)


def test_top_k_and_top_p_keep_only_allowed_tokens():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
  keys = jax.random.split(jax.random.key(1), 1)[0]
  top2 = np.asarray(decode.sample(logits, keys, 1.0, 2, 1.0))
  assert set(top2) == {0, 1}
  nucleus = np.asarray(decode.sample(logits, keys, 1.0, 0, 0.7))  # 0.5 + 0.3 >= 0.7
  assert set(nucleus) == {0, 1}
  assert abs((nucleus == 0).mean() - 0.5 / 0.8) < 0.05


def test_stop_at_eos(model):
  greedy, _ = _generate(model, temperature=0.0)
  eos = int(greedy[0, 2])  # pretend the third greedy token of row 0 is EOS
  tokens, counts = _generate(model, temperature=0.0, eos_id=eos)
  first = [list(np.asarray(r)).index(eos) if eos in np.asarray(r) else 8 for r in greedy]
  np.testing.assert_array_equal(np.asarray(counts), [min(f + 1, 8) for f in first])
  assert (np.asarray(tokens[0, 3:]) == 0).all()


@pytest.fixture(scope='module')
def trained(tiny_workdir, tmp_path_factory):
  workdir = fresh_workdir(tiny_workdir, tmp_path_factory.mktemp('gen') / 'w')
  result = run_cli('pretrain', '--config=configs/tiny.py', '--config.data.seq_len=64',
                   '--config.train.batch_size=8', '--config.train.steps=10',
                   '--config.train.eval_every=0', '--config.train.eval_batches=1',
                   '--config.train.peak_tflops=1.0', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-2000:]
  return str(workdir)


def test_generate_cli_and_bad_input(trained):
  args = [f'--workdir={trained}', '--prompt=Hello', '--prompt=你好', '--max_new_tokens=12']
  one = run_cli('generate', *args, '--temperature=0', '--json')
  two = run_cli('generate', *args, '--temperature=0', '--json')
  assert one.returncode == 0, one.stderr[-2000:]
  a, b = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (one, two))
  assert [s['ids'] for s in a['samples']] == [s['ids'] for s in b['samples']]
  assert all(1 <= s['tokens'] <= 12 for s in a['samples'])
  quantized = run_cli('generate', *args, '--temperature=0', '--quantize=int8', '--json')
  q = json.loads(quantized.stdout.strip().splitlines()[-1])
  assert q['quantize'] == 'int8' and all(1 <= s['tokens'] <= 12 for s in q['samples'])
  before = sorted(os.listdir(trained))
  for extra, fragment in [(['--top_p=0'], '--top_p=0'), (['--top_p=1.5'], '--top_p=1.5'),
                          (['--temperature=-1'], 'negative'),
                          (['--prompt=' + 'word ' * 300], 'exceeds the context')]:
    result = run_cli('generate', *args, *extra)
    assert result.returncode == 2, result.stderr[-1000:]
    assert fragment in result.stderr.strip().splitlines()[-1]
  assert sorted(os.listdir(trained)) == before
