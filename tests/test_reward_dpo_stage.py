"""`run.py reward` / `run.py dpo` workdirs, end to end (slow): DPO exactly ln 2 at step 0
(full and LoRA), a bitwise reward resume after SIGKILL, and `eval` on a reward workdir
(--eval_files, --score_file) against scores recomputed from the saved params."""
import json
import os

import jax
import numpy as np
import pytest

from configs import tiny
from data_pipeline import chat_template
from data_pipeline import preference
from tests.cli_helpers import file_hashes, read_records, restore_state, run_cli
from tests.cli_helpers import kill_at_checkpoint, tiny_pretrain
from tests.model_helpers import LN2, single_spec

SMALL = ['--config.train.batch_size=4', '--config.train.eval_batches=1',
         '--config.train.eval_every=0', '--config.train.peak_tflops=1']


@pytest.fixture(scope='module')
def pretrained(tiny_workdir, tmp_path_factory):
  return tiny_pretrain(tiny_workdir, tmp_path_factory.mktemp('reward_dpo') / 'pretrain')


def _by_step(workdir, key):
  return {r['step']: r for r in read_records(workdir) if key in r}


@pytest.mark.slow
def test_dpo_step_zero_is_exactly_ln2_full_and_lora(pretrained, tmp_path):
  before = file_hashes(pretrained)
  first = {}
  for method in ('full', 'lora'):
    workdir = tmp_path / method
    result = run_cli('dpo', '--config=configs/dpo_tiny.py', *SMALL, f'--workdir={workdir}',
                     f'--init_from={pretrained}', f'--config.dpo.method={method}',
                     '--config.train.steps=2', '--config.train.log_every=1',
                     '--config.data.seq_len=64')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'dpo: {method}, sigmoid loss, beta 0.1' in result.stdout
    train = _by_step(workdir, 'loss')
    assert sorted(train) == [1, 2]
    step1 = train[1]
    assert step1['lr'] == 0.0  # warmup: the first update changes nothing
    for step in (1, 2):  # policy == reference, in float32, bitwise
      record = train[step]
      assert record['loss'] == LN2, (method, step, record['loss'])
      for key in ('rewards/chosen', 'rewards/rejected', 'rewards/margins',
                  'rewards/accuracies'):
        assert record[key] == 0.0, (method, step, key, record[key])
      assert record['logps/chosen'] < 0 and record['logps/rejected'] < 0
      assert record['grad_norm'] > 0
    # The implicit reward at the step-0 evaluation is 0 too (ties count as wrong).
    evals = _by_step(workdir, 'eval_accuracy')
    assert evals[0]['eval_margin'] == 0.0 and evals[0]['eval_accuracy'] == 0.0
    first[method] = step1
  # Full and LoRA start from the same model on the same data.
  assert first['full']['logps/chosen'] == first['lora']['logps/chosen']
  assert first['full']['logps/rejected'] == first['lora']['logps/rejected']
  assert file_hashes(pretrained) == before  # the reference/base is never written


@pytest.fixture(scope='module')
def reward_run(pretrained, tmp_path_factory):
  """A reward run straight through (also the workdir `eval` reads)."""
  root = tmp_path_factory.mktemp('reward_runs')
  args = ['--config=configs/reward_tiny.py', *SMALL, f'--init_from={pretrained}',
          '--config.data.seq_len=128', '--config.train.steps=40', '--config.train.log_every=1',
          '--config.checkpoint.save_every_steps=10', '--config.checkpoint.keep=10']
  straight = root / 'straight'
  result = run_cli('reward', *args, f'--workdir={straight}')
  assert result.returncode == 0, result.stderr[-3000:]
  return {'args': args, 'straight': straight, 'root': root, 'stdout': result.stdout}


@pytest.mark.slow
def test_reward_sigkill_then_resume_is_bitwise_identical(reward_run):
  args, straight = reward_run['args'], reward_run['straight']
  assert 'reward: full; ' in reward_run['stdout']
  killed = reward_run['root'] / 'killed'
  done = kill_at_checkpoint('reward', [*args, f'--workdir={killed}'], killed, 10)
  assert 40 not in done, done  # killed mid-run
  resumed = run_cli('reward', *args, f'--workdir={killed}')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from step' in resumed.stdout
  a, b = _by_step(straight, 'loss'), _by_step(killed, 'loss')  # later lines win
  assert sorted(a) == list(range(1, 41))
  for key in ('loss', 'accuracy', 'margin', 'reward_min', 'reward_max', 'reward_mean'):
    assert [a[s][key] for s in range(1, 41)] == [b[s][key] for s in range(1, 41)], key
  assert a[1]['loss'] == LN2  # the zero-initialised head scores every response 0 at step 0
  assert a[1]['margin'] == 0.0 and a[1]['accuracy'] == 0.0
  assert len({a[s]['loss'] for s in range(2, 41)}) > 30  # and then it trains
  sa, sb = restore_state(straight, 40), restore_state(killed, 40)
  la, lb = (jax.tree_util.tree_leaves_with_path(s) for s in (sa, sb))
  assert [p for p, _ in la] == [p for p, _ in lb]
  assert sorted(sa['params']) == ['head', 'lm']
  assert np.abs(sa['params']['head']['w']).max() > 0  # the zero-initialised head trained
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=str(path))
  ea, eb = _by_step(straight, 'eval_accuracy'), _by_step(killed, 'eval_accuracy')
  assert ea[40] == eb[40]


PAIRS = [
    {'prompt': 'What is the capital of France?', 'chosen': 'Paris.',
     'rejected': 'Paris. Paris. Paris.', 'kind': 'repeat'},
    {'prompt': 'Translate to English: 你好', 'chosen': 'Hello.', 'rejected': '你好。',
     'kind': 'wrong_lang'},
    {'prompt': 'Who wrote Hamlet?', 'chosen': 'William Shakespeare.', 'rejected': 'William',
     'kind': 'truncate'},
    {'prompt': [{'role': 'system', 'content': 'Be brief.'},
                {'role': 'user', 'content': 'What colour is grass?'}],
     'chosen': [{'role': 'assistant', 'content': 'Green.'}],
     'rejected': [{'role': 'assistant', 'content': 'Paris.'}], 'kind': 'mismatch'},
    {'chosen': [{'role': 'user', 'content': 'How many legs has a spider?'},
                {'role': 'assistant', 'content': 'Eight.'}],
     'rejected': [{'role': 'user', 'content': 'How many legs has a spider?'},
                  {'role': 'assistant', 'content': 'Eight. Eight. Eight.'}], 'kind': 'repeat'},
    {'prompt': 'Name a prime number.', 'chosen': 'Seven.', 'rejected': 'Shakespeare.',
     'kind': 'mismatch'},
]


def _as_messages(value, role):
  return value if isinstance(value, list) else [{'role': role, 'content': value}]


@pytest.mark.slow
def test_eval_on_reward_workdir_matches_recomputed_scores(reward_run, tmp_path):
  workdir = reward_run['straight']
  pairs_file = tmp_path / 'pairs.jsonl'
  pairs_file.write_text(''.join(json.dumps(p, ensure_ascii=False) + '\n' for p in PAIRS))
  conversations = []  # (prompt messages, response messages) per score line
  lines = []
  for p in PAIRS:
    pair = preference.to_pair(p, 'x')
    for side in ('chosen', 'rejected'):
      conversations.append((pair['prompt'], pair[side]))
      lines.append({'prompt': pair['prompt'], 'response': pair[side]})
  lines.append({'messages': conversations[0][0] + conversations[0][1]})  # the same as line 1
  lines.append({'prompt': 'What is the capital of France?', 'response': 'Paris.'})  # strings
  score_file = tmp_path / 'scores.jsonl'
  score_file.write_text(''.join(json.dumps(x, ensure_ascii=False) + '\n' for x in lines))
  result = run_cli('eval', f'--workdir={workdir}', '--json', f'--eval_files={pairs_file}',
                   f'--score_file={score_file}')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads([l for l in result.stdout.splitlines() if l.startswith('{')][-1])
  assert summary['stage'] == 'reward' and summary['step'] == 40
  assert summary['pairs'] == len(PAIRS)
  scores = np.asarray(summary['scores'])
  assert len(scores) == len(lines)
  assert scores[-2] == scores[0] and scores[-1] == scores[0]  # three spellings, one score
  chosen, rejected = scores[0:12:2], scores[1:12:2]
  assert np.abs(chosen - rejected).min() > 1e-6  # no ties within float noise: stable comparisons
  right = chosen > rejected
  kinds = [p['kind'] for p in PAIRS]
  assert summary['accuracy'] == pytest.approx(right.mean(), abs=1e-12)
  assert summary['accuracy_by_kind'] == pytest.approx(
      {k: right[[x == k for x in kinds]].mean() for k in sorted(set(kinds))}, abs=1e-12)
  assert sorted(summary['accuracy_by_kind']) == ['mismatch', 'repeat', 'truncate', 'wrong_lang']
  assert summary['margin'] == pytest.approx((chosen - rejected).mean(), abs=1e-5)
  both = np.concatenate([chosen, rejected])
  assert summary['reward_mean'] == pytest.approx(both.mean(), abs=1e-5)
  # Independently, from the saved params: w·h + b at each conversation's last token.
  params = restore_state(workdir, 40)['params']
  config = tiny.get_config()
  spec = single_spec(config)
  from data_pipeline import tokenizer as tokenizer_lib
  tokenizer = tokenizer_lib.load_tokenizer(os.path.join(workdir, 'tokenizer', 'tokenizer.model'))
  hidden_fn = jax.jit(spec.hidden_states)
  for i, (prompt, response) in enumerate(conversations):
    ids, _ = chat_template.encode(tokenizer, prompt + response)
    assert len(ids) < 128 and ids[-1] == tokenizer.chat_ids['<|end_of_turn|>']
    n = len(ids)
    hidden = np.asarray(hidden_fn(params['lm'], ids[None], np.arange(n, dtype=np.int32)[None],
                                  np.ones((1, n), np.int32)), np.float64)[0, n - 1]
    want = hidden @ np.asarray(params['head']['w'], np.float64) + float(params['head']['b'])
    assert abs(scores[i] - want) <= 1e-4 * max(1.0, abs(want)), (i, scores[i], want)
