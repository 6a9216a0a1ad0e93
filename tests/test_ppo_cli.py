"""`run.py ppo` errors a user can cause: one `error:` line, exit code 2, the start
workdirs (--init_from, --reward_from) unchanged and the new workdir not created."""
import os
import shutil

import pytest

from tests.cli_helpers import one_line_error, other_tokenizer, run_cli, tree_hashes
from tests.ppo_helpers import PPO, ppo_roles

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def roles(tiny_workdir, tmp_path_factory):
  return ppo_roles(tiny_workdir, tmp_path_factory)


def _reward_with_other_tokenizer(roles):
  """A copy of the reward workdir whose tokenizer is another one (as if trained with it)."""
  target = roles['root'] / 'reward_other_tok'
  if not target.exists():
    shutil.copytree(roles['r'], target)
    shutil.rmtree(target / 'tokenizer')
    other_tokenizer(target / 'tokenizer')
  return str(target)


CASES = [
    ('reward_from_pretrain', lambda s: [f'--reward_from={s["p"]}'],
     'is not a reward model (its stage is pretrain); give a workdir made by `run.py reward`'),
    ('reward_from_missing', lambda s: [],
     '--reward_from is required: a workdir made by `run.py reward`'),
    ('reward_other_tokenizer', lambda s: [f'--reward_from={_reward_with_other_tokenizer(s)}'],
     '--reward_from was trained with another tokenizer than --init_from'),
    ('no_room_for_prompt', lambda s: [f'--reward_from={s["r"]}',
                                      '--config.ppo.max_new_tokens=126'],
     'ppo.max_new_tokens=126 leaves no room for a prompt in data.seq_len=128'),
    ('minibatches_not_dividing', lambda s: [f'--reward_from={s["r"]}',
                                            '--config.ppo.minibatches=3'],
     'ppo.minibatches=3 must divide train.batch_size=4'),
]


@pytest.mark.parametrize('name,flags,fragment', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(roles, tmp_path, name, flags, fragment):
  watched = [roles['p'], roles['r']]
  before = [tree_hashes(w) for w in watched]
  workdir = tmp_path / 'ppo'
  result = run_cli('ppo', *PPO, '--config.train.steps=2', f'--workdir={workdir}',
                   f'--init_from={roles["p"]}', *flags(roles))
  one_line_error(result, fragment)
  assert [tree_hashes(w) for w in watched] == before
  assert not workdir.exists() or not os.listdir(workdir), os.listdir(workdir)

