"""SFT of the `tiny` model on the embedded instruction set (minutes on a CPU).

`python run.py sft --config=configs/sft_tiny.py --workdir=runs/sft --init_from=runs/tiny`
"""
from configs import tiny


def get_config():
  config = tiny.get_config()
  config.data.seq_len = 256  # whole conversations: ~95% of the embedded set fits
  config.train.steps = 300
  config.train.batch_size = 16
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 20
  config.train.weight_decay = 0.0
  config.train.eval_every = 100
  config.train.eval_batches = 8
  config.checkpoint.save_every_steps = 100
  config.sft.lora_rank = 8
  return config
