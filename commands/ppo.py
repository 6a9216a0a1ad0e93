"""`run.py ppo`: RLHF with PPO from an SFT model and a reward model."""
from absl import flags

from commands import common

RESUME = common.resume_flag()
INIT_FROM = common.define('string', 'init_from', None, 'The SFT workdir (its latest checkpoint) '
                          'or checkpoint step directory: actor and reference.')
REWARD_FROM = flags.DEFINE_string('reward_from', None, 'The reward workdir (`run.py reward`).')


def main(config, workdir):
  from posttrain import ppo_run
  ppo_run.run_ppo(config, workdir, INIT_FROM(), REWARD_FROM.value, resume=RESUME(),
                  on_ready=common.on_ready(config, workdir))
