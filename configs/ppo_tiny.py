"""PPO of the `tiny` SFT model against the tiny reward model (CPU, minutes).

`python run.py ppo --config=configs/ppo_tiny.py --workdir=runs/ppo --init_from=runs/sft
  --reward_from=runs/reward`
"""
from configs import sft_tiny


def get_config():
  config = sft_tiny.get_config()
  config.data.seq_len = 128  # prompt (<= 96 tokens) + answer
  config.ppo.max_new_tokens = 32
  config.train.steps = 40  # PPO iterations
  config.train.batch_size = 16  # prompts per iteration
  config.train.learning_rate = 1e-4
  config.train.warmup_steps = 0
  config.train.log_every = 1
  config.train.eval_every = 0
  config.checkpoint.save_every_steps = 10
  config.ppo.missing_eot_penalty = 1.0
  config.ppo.repeat_penalty = 0.5
  return config
