"""`run.py grpo`: GRPO with verifiable rewards from an SFT model (and optionally a
reward model, when grpo.rewards names reward_model)."""
from absl import flags

from commands import common

RESUME = common.resume_flag()
INIT_FROM = common.define('string', 'init_from', None, 'The SFT workdir (its latest checkpoint) '
                          'or checkpoint step directory: the policy and its reference.')
REWARD_FROM = flags.DEFINE_string('reward_from', None, 'The reward workdir (`run.py reward`), '
                                  'for the reward_model reward.')


def main(config, workdir):
  from posttrain import grpo_run
  grpo_run.run_grpo(config, workdir, INIT_FROM(), REWARD_FROM.value, resume=RESUME(),
                    on_ready=common.on_ready(config, workdir))
