"""Builds the GRPO stage and runs it on the engine (the `run.py grpo` entry)."""
from posttrain.grpo import GrpoStage
from posttrain.run_stage import run_stage


def run_grpo(config, workdir, init_from, reward_from=None, resume=True, on_ready=None):
  cfg = config.grpo

  def plan(stage):
    return (f'grpo: {cfg.method}, rewards {cfg.rewards}, {cfg.loss_type} loss; '
            f'{stage.num_prompts:,} prompts ({stage.prompt_stats["too_long"]} longer than '
            f'{stage.max_prompt_len} tokens skipped), {stage.prompts_per_step} per step × '
            f'{cfg.num_generations} answers')
  return run_stage(GrpoStage(config, workdir, init_from, reward_from), workdir, resume,
                   on_ready, plan, lambda result: f'grpo: step {result["step"]} done')
