"""The CPU default for real runs and the benchmark shape (~17M params).

d_model 384, 6 layers, 6 heads, 6 KV heads, SwiGLU 1024, vocab 8192, untied
head, seq 256, global batch 16; float32 on CPU (model.dtype 'auto').
"""
from configs import base


def get_config():
  return base.get_config()
