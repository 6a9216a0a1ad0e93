"""A model small enough for tests and a CPU demo in minutes (~1.5M params)."""
from configs import base


def get_config():
  config = base.get_config()
  config.tokenizer.vocab_size = 2048
  config.model.vocab_size = 2048
  config.model.num_layers = 2
  config.model.d_model = 128
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.mlp_dim = 384
  config.model.max_seq_len = 256
  config.data.seq_len = 128
  config.train.steps = 1000
  config.train.batch_size = 16
  config.train.learning_rate = 3e-3
  config.train.warmup_steps = 50
  config.train.eval_every = 250
  config.checkpoint.save_every_steps = 250
  return config
