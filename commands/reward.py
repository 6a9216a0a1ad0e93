"""`run.py reward`: trains a reward model on preference pairs."""
from commands import common

RESUME = common.resume_flag()
INIT_FROM = common.define('string', 'init_from', None, 'The workdir (its latest checkpoint) or '
                          'checkpoint step directory to start from.')


def main(config, workdir):
  from posttrain import reward
  reward.run_reward(config, workdir, INIT_FROM(), resume=RESUME(),
                    on_ready=common.on_ready(config, workdir))
