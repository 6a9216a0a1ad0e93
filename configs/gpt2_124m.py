"""GPT-2 small shape (124M) in this architecture: SwiGLU 2048 keeps GPT-2's MLP
parameter count; tied embeddings; vocab 50304 (50257 padded to a multiple of 64).
Not trained here; `run.py describe` builds it abstractly."""
from configs import base


def get_config():
  config = base.get_config()
  config.tokenizer.vocab_size = config.model.vocab_size = 50304
  config.model.num_layers = 12
  config.model.d_model = 768
  config.model.num_heads = config.model.num_kv_heads = 12
  config.model.mlp_dim = 2048
  config.model.tie_embeddings = True
  config.model.max_seq_len = 1024
  config.data.seq_len = 1024
  config.train.batch_size = 512
  config.train.learning_rate = 6e-4
  return config
