"""Every command on every stage's workdir either works or says in one line what to use
instead (issue 26, class 1): a table, command × the workdir of pretrain, sft, reward, dpo
and ppo. A refusal is exit 2 with one `error:` line and the workdir unchanged."""
import os
import shutil

import pytest

from tests.cli_helpers import one_line_error, run_cli, tree_hashes, write_jsonl
from tests.ppo_helpers import PPO, ppo_roles

pytestmark = pytest.mark.slow

STAGES = ('pretrain', 'sft', 'reward', 'dpo', 'ppo')
TINY = ['--config.train.steps=2', '--config.train.batch_size=4', '--config.train.eval_batches=1',
        '--config.train.eval_every=0', '--config.train.peak_tflops=1']
CONFIG = {'pretrain': 'configs/tiny.py', 'sft': 'configs/sft_tiny.py',
          'reward': 'configs/reward_tiny.py', 'dpo': 'configs/dpo_tiny.py',
          'ppo': 'configs/ppo_tiny.py'}
REWARD_MODEL = ('is a reward model: it scores text and has no language-model head to sample '
                'from or export; score responses with `run.py eval')


@pytest.fixture(scope='module')
def workdirs(tiny_workdir, tmp_path_factory):
  """{stage: a tiny finished workdir of that stage}, every post-training one from the same
  pretraining run (PPO with the reward model), plus 'root' for scratch folders."""
  roles = ppo_roles(tiny_workdir, tmp_path_factory)
  root = tmp_path_factory.mktemp('stage_table')
  out = {'pretrain': roles['p'], 'reward': roles['r'], 'root': root}
  for stage in ('sft', 'dpo', 'ppo'):
    extra = [*PPO, '--config.train.steps=1', f'--reward_from={roles["r"]}'] if stage == 'ppo' \
        else [f'--config={CONFIG[stage]}', *TINY]
    result = run_cli(stage, *extra, f'--workdir={root / stage}', f'--init_from={roles["p"]}')
    assert result.returncode == 0, result.stderr[-2000:]
    out[stage] = str(root / stage)
  return out


def _read_only(command, workdir, root):
  if command == 'eval':
    return ['eval', '--config=configs/tiny.py', f'--workdir={workdir}', '--batch_size=4',
            '--max_batches=1', '--eval_files=']
  if command == 'generate':
    return ['generate', '--config=configs/tiny.py', f'--workdir={workdir}', '--prompt=hi',
            '--max_new_tokens=2']
  out = root / f'export_{os.path.basename(workdir)}'
  shutil.rmtree(out, ignore_errors=True)
  return ['export', '--config=configs/tiny.py', f'--workdir={workdir}', f'--out={out}',
          '--noparity']


# The reading commands: None = works (exit 0), else the fragment of its one error line.
READ_TABLE = {
    ('eval', s): None for s in STAGES} | {
    ('generate', s): None for s in STAGES} | {
    ('export', s): None for s in STAGES} | {
    ('generate', 'reward'): REWARD_MODEL,
    ('export', 'reward'): REWARD_MODEL,
}


@pytest.mark.parametrize('command,stage', sorted(READ_TABLE), ids=lambda x: x)
def test_reading_commands_on_every_stage(workdirs, command, stage):
  before = tree_hashes(workdirs[stage])
  result = run_cli(*_read_only(command, workdirs[stage], workdirs['root']))
  expected = READ_TABLE[command, stage]
  if expected is None:
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
  else:
    one_line_error(result, expected)
    assert not os.path.exists(workdirs['root'] / f'export_{stage}')
  assert tree_hashes(workdirs[stage]) == before


# A training command on a workdir another stage wrote: one line, the workdir unchanged (its
# checkpoints were once set aside as "unreadable" and the run started over). Each command
# once and each stage's workdir once.
RESUME_TABLE = [('pretrain', 'sft'), ('sft', 'reward'), ('reward', 'dpo'), ('dpo', 'ppo'),
                ('ppo', 'pretrain')]


@pytest.mark.parametrize('command,stage', RESUME_TABLE, ids=lambda x: x)
def test_a_training_command_refuses_another_stages_workdir(workdirs, command, stage):
  before = tree_hashes(workdirs[stage])
  extra = ([*PPO, f'--reward_from={workdirs["reward"]}'] if command == 'ppo' else
           [f'--config={CONFIG[command]}', *TINY])
  if command != 'pretrain':
    extra.append(f'--init_from={workdirs["pretrain"]}')
  result = run_cli(command, *extra, f'--workdir={workdirs[stage]}')
  one_line_error(result, f'this workdir holds {stage} checkpoints (from `run.py {stage}`), '
                 f'which {command} cannot resume; give {command} a new --workdir')
  assert tree_hashes(workdirs[stage]) == before


@pytest.mark.parametrize('command', ['sft', 'reward', 'dpo', 'ppo'])
def test_a_reward_model_is_no_start_for_a_stage(workdirs, command):
  extra = ([*PPO, f'--reward_from={workdirs["reward"]}'] if command == 'ppo' else
           [f'--config={CONFIG[command]}', *TINY])
  workdir = workdirs['root'] / f'from_reward_{command}'
  result = run_cli(command, *extra, f'--workdir={workdir}', f'--init_from={workdirs["reward"]}')
  one_line_error(result, f'--init_from is a reward model; {command} starts from a language model')
  assert not workdir.exists() or not os.listdir(workdir)


def test_score_file_empty_and_on_a_workdir_that_is_no_reward_model(workdirs):
  root = workdirs['root']
  empty = write_jsonl(root / 'empty.jsonl', [''])
  result = run_cli('eval', '--config=configs/tiny.py', f'--workdir={workdirs["reward"]}',
                   f'--score_file={empty}', '--batch_size=4')
  one_line_error(result, f'--score_file={empty} holds no line to score (it is empty or blank)')
  lines = write_jsonl(root / 'lines.jsonl', [{'prompt': 'q', 'response': 'a'}])
  result = run_cli('eval', '--config=configs/tiny.py', f'--workdir={workdirs["sft"]}',
                   f'--score_file={lines}', '--batch_size=4')
  one_line_error(result, '--score_file scores responses with a reward model, but this '
                 'checkpoint is of the sft stage; give the --workdir of a `run.py reward` run')


def test_a_missing_reward_model_does_not_send_the_user_to_pretrain(workdirs):
  empty = workdirs['root'] / 'no_reward'
  empty.mkdir(exist_ok=True)
  result = run_cli('ppo', *PPO, f'--workdir={workdirs["root"] / "ppo_x"}',
                   f'--init_from={workdirs["pretrain"]}', f'--reward_from={empty}')
  one_line_error(result, f'--reward_from={empty} holds no checkpoint; it must be a workdir '
                 'made by `run.py reward`: train one with `run.py reward')
  assert 'pretrain' not in result.stderr.splitlines()[-1]


def test_a_non_finite_margin_stops_the_reward_stage_before_training(workdirs):
  pairs = write_jsonl(workdirs['root'] / 'nan_pairs.jsonl', [
      {'prompt': 'q', 'chosen': 'a', 'rejected': 'b'},
      '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}'])
  workdir = workdirs['root'] / 'reward_nan'
  result = run_cli('reward', f'--config={CONFIG["reward"]}', *TINY, f'--workdir={workdir}',
                   f'--init_from={workdirs["pretrain"]}', f'--config.data.train_files={pairs}')
  one_line_error(result, f'{pairs}:2: "margin" must be a finite number; got nan')
  assert not workdir.exists() or not os.listdir(workdir)
