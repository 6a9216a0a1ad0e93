"""Llama 3.2 1B shape: 16 layers, d 2048, 32 heads / 8 KV heads, SwiGLU 8192,
vocab 128256, tied embeddings, RoPE theta 500000. Built abstractly here."""
from configs import base


def get_config():
  config = base.get_config()
  config.tokenizer.vocab_size = config.model.vocab_size = 128256
  config.model.num_layers = 16
  config.model.d_model = 2048
  config.model.num_heads = 32
  config.model.num_kv_heads = 8
  config.model.mlp_dim = 8192
  config.model.tie_embeddings = True
  config.model.rope_theta = 500000.0
  config.model.max_seq_len = 8192
  config.model.remat = 'dots'
  config.data.seq_len = 4096
  config.train.batch_size = 256
  config.train.learning_rate = 3e-4
  config.mesh.fsdp = -1
  config.mesh.data = 1
  return config
