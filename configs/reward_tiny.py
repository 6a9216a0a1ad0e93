"""Reward model on the `tiny` SFT model and the embedded preference pairs.

`python run.py reward --config=configs/reward_tiny.py --workdir=runs/reward --init_from=runs/sft`
"""
from configs import sft_tiny


def get_config():
  config = sft_tiny.get_config()
  config.train.steps = 300
  config.train.batch_size = 16  # pairs (32 sequences)
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 20
  config.train.eval_every = 100
  config.train.eval_batches = 16
  config.reward.center_coef = 0.01
  return config
