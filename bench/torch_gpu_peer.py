"""The PyTorch peer of the GPU check: the same decoder (bench/torch_reference.py's
blocks), float32 params, bf16 autocast, SDPA (flash on GPU; causal only, it
ignores document boundaries), fused AdamW, `torch.compile`. Tokens/s and MFU."""
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench import torch_reference
from engine import flops


class Decoder(nn.Module):

  def __init__(self, m):
    super().__init__()
    self.m = m
    self.embed = nn.Embedding(m.vocab_size, m.d_model)
    self.blocks = nn.ModuleList([torch_reference.Block(m) for _ in range(m.num_layers)])
    self.final_norm = torch_reference.RMSNorm(m.d_model, m.norm_eps)
    self.lm_head = None if m.tie_embeddings else nn.Linear(m.d_model, m.vocab_size, bias=False)
    for p in self.parameters():
      if p.dim() >= 2:
        nn.init.normal_(p, std=m.init_std)
    hd = m.head_dim or m.d_model // m.num_heads
    inv = m.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angle = torch.arange(m.max_seq_len, dtype=torch.float32)[:, None] * inv
    self.register_buffer('cos', angle.cos(), persistent=False)
    self.register_buffer('sin', angle.sin(), persistent=False)

  def forward(self, tokens):
    t = tokens.shape[1]
    cos, sin = self.cos[:t], self.sin[:t]
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x, cos, sin)
    x = self.final_norm(x)
    return x @ self.embed.weight.T if self.lm_head is None else self.lm_head(x)


def measure(model_cfg, batch, seq_len, steps=5, peak=None, compile_model=True, seed=0):
  torch.manual_seed(seed)
  cuda = torch.cuda.is_available()
  device = 'cuda' if cuda else 'cpu'
  torch.backends.cuda.matmul.allow_tf32 = True
  model = Decoder(model_cfg).to(device)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1},
                           {'params': no_decay, 'weight_decay': 0.0}],
                          lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=cuda)
  forward = torch.compile(model) if compile_model else model
  tokens = torch.randint(8, model_cfg.vocab_size, (batch, seq_len + 1), device=device)
  dtype = torch.bfloat16 if cuda else torch.float32

  def step():
    with torch.autocast(device, dtype=dtype, enabled=cuda):
      logits = forward(tokens[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, model_cfg.vocab_size),
                           tokens[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if cuda:
      torch.cuda.synchronize()
    return loss.item()

  start = time.perf_counter()
  step()
  compile_s = time.perf_counter() - start
  step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  tokens_per_s = batch * seq_len / step_s
  model_flops = flops.train_flops_per_token(model_cfg, seq_len) * tokens_per_s
  return {'tokens_per_s': tokens_per_s, 'step_s': step_s, 'compile_s': compile_s,
          'model_tflops': model_flops / 1e12, 'mfu': model_flops / peak if peak else None,
          'compiled': compile_model,
          'peak_gpu_mem_gib': torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0}
