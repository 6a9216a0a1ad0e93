"""DPO of the `tiny` SFT model on the embedded preference pairs.

`python run.py dpo --config=configs/dpo_tiny.py --workdir=runs/dpo --init_from=runs/sft`
"""
from configs import sft_tiny


def get_config():
  config = sft_tiny.get_config()
  config.train.steps = 200
  config.train.batch_size = 16  # pairs (32 sequences)
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 20
  config.train.eval_every = 100
  config.train.eval_batches = 16
  return config
