"""Builds the PPO stage and runs it on the engine (the `run.py ppo` entry)."""
from posttrain.ppo import PpoStage
from posttrain.run_stage import run_stage


def run_ppo(config, workdir, init_from, reward_from, resume=True, on_ready=None):
  def plan(stage):
    return (f'ppo: actor {config.ppo.method}, critic from {config.ppo.critic_init}; '
            f'{stage.num_prompts:,} prompts ({stage.prompt_stats["too_long"]} longer than '
            f'{stage.max_prompt_len} tokens skipped), {config.train.batch_size} per iteration')
  return run_stage(PpoStage(config, workdir, init_from, reward_from), workdir, resume,
                   on_ready, plan, lambda result: f'ppo: iteration {result["step"]} done')
