"""Builds the PPO stage and runs it on the engine (the `run.py ppo` entry)."""
import jax

from engine.trainer import Trainer
from posttrain import init_from as init_from_lib
from posttrain.ppo import PpoStage


def run_ppo(config, workdir, init_from, reward_from, resume=True, on_ready=None):
  stage = PpoStage(config, workdir, init_from, reward_from)
  trainer = Trainer(stage, resume)
  if jax.process_index() == 0:
    init_from_lib.copy_tokenizer(stage.init, workdir)
    print(f'ppo: actor {config.ppo.method}, critic from {config.ppo.critic_init}; '
          f'{stage.num_prompts:,} prompts ({stage.prompt_stats["too_long"]} longer than '
          f'{stage.max_prompt_len} tokens skipped), {config.train.batch_size} per iteration',
          flush=True)
  if on_ready is not None:
    on_ready()
  result = trainer.run()
  if jax.process_index() == 0:
    print(f'ppo: iteration {result["step"]} done', flush=True)
  return result
