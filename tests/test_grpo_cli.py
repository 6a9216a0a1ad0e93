"""`run.py grpo` errors a user can cause: one `error:` line, exit code 2, the start
workdir unchanged and the new workdir not created (or left empty)."""
import os
import textwrap

import pytest

from tests.cli_helpers import one_line_error, run_cli, tree_hashes, write_jsonl
from tests.grpo_helpers import GRPO, grpo_start

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def start(tiny_workdir, tmp_path_factory):
  s = grpo_start(tiny_workdir, tmp_path_factory)
  folder = s['root'] / 'user_code'
  folder.mkdir(exist_ok=True)
  (folder / 'grpo_user_rewards.py').write_text(textwrap.dedent('''
      def raises(prompts, completions, **columns):
        raise KeyError('answer')

      def short(prompts, completions, **columns):
        return [0.0]

      def nan(prompts, completions, **columns):
        return [float('nan') for _ in completions]
      '''))
  (folder / 'grpo_broken_module.py').write_text('import no_such_dependency_xyz\n')
  s['pythonpath'] = str(folder)
  no_reference = s['root'] / 'no_reference.jsonl'
  write_jsonl(no_reference, [{'prompt': '1+1=?', 'reference': '2'}, {'prompt': 'Say hi.'}])
  s['no_reference'] = str(no_reference)
  return s


def _rewards(spec):
  return [f'--config.grpo.rewards={spec}']


CASES = [
    ('one_generation', ['--config.grpo.num_generations=1'],
     'grpo.num_generations=1'),
    ('batch_not_dividing', ['--config.grpo.num_generations=3'],
     'grpo.num_generations=3 must divide train.batch_size=16'),
    ('unknown_reward', _rewards('f1:1,exact:1'), 'unknown reward "exact"'),
    ('function_raises', _rewards('grpo_user_rewards:raises'),
     "grpo_user_rewards:raises raised KeyError: 'answer'"),
    ('wrong_length', _rewards('grpo_user_rewards:short'),
     'returned 1 values for 4 completions'),
    ('nan', _rewards('grpo_user_rewards:nan'), 'returned nan; return finite numbers'),
    ('module_does_not_import', _rewards('grpo_broken_module:score'),
     'cannot import grpo_broken_module (ModuleNotFoundError'),
    ('exact_match_without_reference', ['--config.grpo.rewards=exact_match:1',
                                       '--config.data.train_files=NO_REFERENCE'],
     'grpo.rewards asks for exact_match but'),
    ('reward_model_without_reward_from', _rewards('f1:1,reward_model:0.5'),
     '--reward_from is required'),
]


@pytest.mark.parametrize('name,flags,fragment', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(start, tmp_path, name, flags, fragment):
  before = tree_hashes(start['p'])
  workdir = tmp_path / 'grpo'
  flags = [f.replace('NO_REFERENCE', start['no_reference']) for f in flags]
  result = run_cli('grpo', *GRPO, '--config.train.steps=2', f'--workdir={workdir}',
                   f'--init_from={start["p"]}', *flags,
                   env={'PYTHONPATH': start['pythonpath']})
  one_line_error(result, fragment)
  if name == 'exact_match_without_reference':
    assert 'no_reference.jsonl:2 has no "reference"' in result.stderr
  assert tree_hashes(start['p']) == before
  assert not workdir.exists() or not os.listdir(workdir), os.listdir(workdir)
