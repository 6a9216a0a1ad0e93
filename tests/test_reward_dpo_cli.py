"""`run.py reward` / `run.py dpo` errors a user can cause: one `error:` line, exit 2,
and the workdirs left as they were (an existing one unchanged, a new one not created)."""
import os
import shutil

import pytest

from tests.cli_helpers import one_line_error, other_tokenizer, run_cli, tiny_pretrain
from tests.cli_helpers import tree_hashes, write_jsonl

pytestmark = pytest.mark.slow
SMALL = ['--config.train.batch_size=4', '--config.train.eval_batches=1',
         '--config.train.eval_every=0', '--config.train.peak_tflops=1',
         '--config.data.seq_len=64']
CONFIG = {'reward': '--config=configs/reward_tiny.py', 'dpo': '--config=configs/dpo_tiny.py'}
GOOD = {'prompt': 'What is the capital of France?', 'chosen': 'Paris.', 'rejected': 'Rome.'}


@pytest.fixture(scope='module')
def setup(tiny_workdir, tmp_path_factory):
  root = tmp_path_factory.mktemp('reward_dpo_cli')
  p = tiny_pretrain(tiny_workdir, root / 'pretrain')
  # A reward workdir holding a run (full, 2 steps): reward errors must leave it as it is,
  # and dpo must refuse it as --init_from.
  existing = root / 'reward'
  result = run_cli('reward', CONFIG['reward'], *SMALL, f'--workdir={existing}',
                   f'--init_from={p}', '--config.train.steps=2')
  assert result.returncode == 0, result.stderr[-2000:]
  # A workdir that already has another tokenizer, and a copy of P whose tokenizer was
  # replaced after its checkpoint was trained.
  other = other_tokenizer(root / 'other_tok' / 'tokenizer')
  retokenized = root / 'retokenized'
  shutil.copytree(p, retokenized)
  shutil.rmtree(retokenized / 'tokenizer')
  shutil.copytree(root / 'other_tok' / 'tokenizer', retokenized / 'tokenizer')
  from data_pipeline import tokenizer as tokenizer_lib
  assert other.fingerprint != tokenizer_lib.load_tokenizer(
      str(p / 'tokenizer' / 'tokenizer.model')).fingerprint
  long_prompt = ' '.join(['Please explain, in careful detail, why the sky looks blue.'] * 3)
  files = {
      'not_json': write_jsonl(root / 'not_json.jsonl', [GOOD, '{"prompt": "a", "chosen": oops']),
      'no_rejected': write_jsonl(root / 'no_rejected.jsonl', [
          GOOD, {'prompt': 'Hi', 'chosen': 'Hello!'}]),
      'identical': write_jsonl(root / 'identical.jsonl', [
          dict(GOOD, rejected='Paris.'), {'prompt': 'Hi', 'chosen': 'Hello!', 'rejected': 'Hello!'},
          {'chosen': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Yo'}],
           'rejected': [{'role': 'user', 'content': 'Hi'},
                        {'role': 'assistant', 'content': 'Yo'}]}]),
      'long_prompts': write_jsonl(root / 'long_prompts.jsonl', [
          dict(GOOD, prompt=long_prompt), dict(GOOD, prompt=long_prompt + ' Now.')]),
  }
  return {'p': str(p), 'existing': existing, 'other_tok': root / 'other_tok', 'root': root,
          'retokenized': str(retokenized), 'files': files}


# (name, stage, flags given the setup, fragment of the error line). Reward errors run on the
# existing reward workdir (it must not change), dpo errors and those marked `new` on a new
# workdir (it must not be created).
CASES = [
    ('not_json', 'reward', lambda s: [f'--config.data.train_files={s["files"]["not_json"]}'],
     'not_json.jsonl:2 is not valid JSON'),
    ('no_rejected', 'reward', lambda s: [f'--config.data.eval_files={s["files"]["no_rejected"]}'],
     'no_rejected.jsonl:2 needs "chosen" and "rejected"'),
    ('no_rejected_new', 'reward',
     lambda s: [f'--config.data.train_files={s["files"]["no_rejected"]}'],
     'no_rejected.jsonl:2 needs "chosen" and "rejected"'),
    ('identical', 'reward', lambda s: [f'--config.data.train_files={s["files"]["identical"]}'],
     'the training pairs: none of its 3 pairs is usable (3 with chosen == rejected, 0 whose'),
    ('identical', 'dpo', lambda s: [f'--config.data.train_files={s["files"]["identical"]}'],
     'the training pairs: none of its 3 pairs is usable (3 with chosen == rejected, 0 whose'),
    ('no_room', 'reward', lambda s: [f'--config.data.train_files={s["files"]["long_prompts"]}',
                                     '--config.data.seq_len=16'],
     'none of its 2 pairs is usable (0 with chosen == rejected, 2 whose prompt leaves no room '
     'for a response in data.seq_len)'),
    ('retokenized_init_from', 'dpo', lambda s: [f'--init_from={s["retokenized"]}'],
     'is not the one checkpoint 10 was trained with'),
    ('reward_init_from', 'dpo', lambda s: [f'--init_from={s["existing"]}'],
     '--init_from is a reward model; dpo starts from a language model'),
    ('beta_0', 'dpo', lambda s: ['--config.dpo.beta=0'], 'dpo.beta=0.0 must be > 0'),
    ('loss_type_bogus', 'dpo', lambda s: ['--config.dpo.loss_type=bogus'],
     "config dpo.loss_type='bogus' is not one of ('sigmoid', 'ipo')"),
    ('label_smoothing_half', 'dpo', lambda s: ['--config.dpo.label_smoothing=0.5'],
     'dpo.label_smoothing=0.5 must be in [0, 0.5)'),
    ('method_bogus', 'reward', lambda s: ['--config.reward.method=bogus'],
     "config reward.method='bogus' is not one of ('full', 'lora')"),
]


def _run(stage, setup, workdir, flags):
  init = [] if any(f.startswith('--init_from=') for f in flags) else [f'--init_from={setup["p"]}']
  return run_cli(stage, CONFIG[stage], *SMALL, f'--workdir={workdir}', *init, *flags,
                 '--config.train.steps=2')


@pytest.mark.parametrize('name,stage,flags,fragment', CASES,
                         ids=[f'{c[1]}-{c[0]}' for c in CASES])
def test_error_is_one_line_and_touches_nothing(setup, tmp_path, name, stage, flags, fragment):
  """--init_from (and the reward workdir dpo refuses) never change either."""
  watched = [setup['p'], setup['existing'], setup['retokenized']]
  before = [tree_hashes(w) for w in watched]
  assert 'checkpoints/2/' in before[1]
  new = stage == 'dpo' or name.endswith('_new')
  workdir = tmp_path / 'new' if new else setup['existing']
  one_line_error(_run(stage, setup, workdir, flags(setup)), fragment)
  assert [tree_hashes(w) for w in watched] == before
  if new:
    assert not workdir.exists(), os.listdir(workdir)


@pytest.mark.parametrize('stage', ['reward', 'dpo'])
def test_workdir_with_another_tokenizer_is_refused(setup, stage):
  workdir = setup['other_tok']
  before, p_before = tree_hashes(workdir), tree_hashes(setup['p'])
  assert 'tokenizer/tokenizer.model' in before and 'checkpoints/' not in before
  one_line_error(_run(stage, setup, workdir, []),
                 f'the tokenizer at {workdir}/tokenizer/tokenizer.model differs from the one '
                 '--init_from was trained with')
  assert tree_hashes(workdir) == before
  assert tree_hashes(setup['p']) == p_before


def test_reward_resume_with_another_method_is_an_error(setup):
  existing = setup['existing']
  before = tree_hashes(existing)
  one_line_error(_run('reward', setup, existing, ['--config.reward.method=lora']),
                 'but the checkpoints in this workdir were trained with full')
  # Refused after WORKDIR/.lock was taken: the lock is released and removed again.
  assert tree_hashes(existing) == before
