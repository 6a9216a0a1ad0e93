"""Llama 2 7B shape: 32 layers, d 4096, 32 heads, SwiGLU 11008, vocab 32000,
untied head. Built abstractly here (6.74B params)."""
from configs import base


def get_config():
  config = base.get_config()
  config.tokenizer.vocab_size = config.model.vocab_size = 32000
  config.model.num_layers = 32
  config.model.d_model = 4096
  config.model.num_heads = config.model.num_kv_heads = 32
  config.model.mlp_dim = 11008
  config.model.max_seq_len = 4096
  config.model.remat = 'full'
  config.data.seq_len = 4096
  config.train.batch_size = 1024
  config.train.learning_rate = 3e-4
  config.mesh.fsdp = -1
  config.mesh.data = 1
  return config
