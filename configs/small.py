"""The CPU default for real runs and the benchmark shape (~17M params).

d_model 384, 6 layers, 6 heads, 6 KV heads, SwiGLU 1024, vocab 8192, untied
head, seq 256, global batch 16; float32 on CPU (model.dtype 'auto').
"""
from configs import base


def get_config():
  config = base.get_config()
  # Eight microbatches of 2 rows (512 tokens, as tiny's 4 × 128): on a 2-core CPU the
  # step runs 1.2x faster than one 16-row pass, whose activations do not stay in cache
  # (the same update up to summation order; bench/microbatch_timing.py,
  # bench/results/2026-12-05-microbatches-small.json).
  config.train.microbatches = 8
  return config
