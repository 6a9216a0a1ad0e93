"""The same model and train step in PyTorch, as a peer for the benchmark.

LLaMA-style decoder with our exact shapes: untied embedding/LM head, RMSNorm,
grouped-query attention with half-split RoPE through
`F.scaled_dot_product_attention` (causal), SwiGLU; AdamW with decay on matrices
only, global-norm clipping, float32. Timed eager and under `torch.compile`.
"""
import contextlib
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench.timing import median_seconds


class RMSNorm(nn.Module):

  def __init__(self, dim, eps):
    super().__init__()
    self.scale = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def rope(x, cos, sin):
  x1, x2 = x.chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):

  def __init__(self, m):
    super().__init__()
    hd = m.head_dim or m.d_model // m.num_heads
    self.h, self.k, self.hd = m.num_heads, m.num_kv_heads, hd
    self.attn_norm = RMSNorm(m.d_model, m.norm_eps)
    self.wq = nn.Linear(m.d_model, m.num_heads * hd, bias=False)
    self.wk = nn.Linear(m.d_model, m.num_kv_heads * hd, bias=False)
    self.wv = nn.Linear(m.d_model, m.num_kv_heads * hd, bias=False)
    self.wo = nn.Linear(m.num_heads * hd, m.d_model, bias=False)
    self.mlp_norm = RMSNorm(m.d_model, m.norm_eps)
    self.w_gate = nn.Linear(m.d_model, m.mlp_dim, bias=False)
    self.w_up = nn.Linear(m.d_model, m.mlp_dim, bias=False)
    self.w_down = nn.Linear(m.mlp_dim, m.d_model, bias=False)

  def forward(self, x, cos, sin):
    b, t, _ = x.shape
    y = self.attn_norm(x)
    q = rope(self.wq(y).view(b, t, self.h, self.hd).transpose(1, 2), cos, sin)
    k = rope(self.wk(y).view(b, t, self.k, self.hd).transpose(1, 2), cos, sin)
    v = self.wv(y).view(b, t, self.k, self.hd).transpose(1, 2)
    if self.k != self.h:
      k = k.repeat_interleave(self.h // self.k, dim=1)
      v = v.repeat_interleave(self.h // self.k, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.wo(o.transpose(1, 2).reshape(b, t, self.h * self.hd))
    y = self.mlp_norm(x)
    return x + self.w_down(F.silu(self.w_gate(y)) * self.w_up(y))


class Transformer(nn.Module):

  def __init__(self, m):
    super().__init__()
    self.m = m
    self.embed = nn.Embedding(m.vocab_size, m.d_model)
    self.blocks = nn.ModuleList([Block(m) for _ in range(m.num_layers)])
    self.final_norm = RMSNorm(m.d_model, m.norm_eps)
    self.lm_head = None if m.tie_embeddings else nn.Linear(m.d_model, m.vocab_size, bias=False)
    for p in self.parameters():
      if p.dim() >= 2:
        nn.init.normal_(p, std=m.init_std)

  def forward(self, tokens):
    t = tokens.shape[1]
    hd = self.m.head_dim or self.m.d_model // self.m.num_heads
    inv = self.m.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angle = torch.arange(t, dtype=torch.float32)[:, None] * inv
    cos, sin = angle.cos(), angle.sin()
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x, cos, sin)
    x = self.final_norm(x)
    return x @ self.embed.weight.T if self.lm_head is None else self.lm_head(x)


def count_params(model_cfg):
  return sum(p.numel() for p in Transformer(model_cfg).parameters())


def make_train_step(config, compile_model=False, seed=0, optimizer_scope=contextlib.nullcontext):
  """step() -> loss of one AdamW step on a fixed random batch; clipping and the update
  run inside `optimizer_scope()` (the profile names them)."""
  torch.manual_seed(seed)
  m, train = config.model, config.train
  model = Transformer(m)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': train.weight_decay},
                           {'params': no_decay, 'weight_decay': 0.0}],
                          lr=train.learning_rate, betas=(train.b1, train.b2), eps=train.eps)
  forward = torch.compile(model) if compile_model else model
  b, t = train.batch_size, config.data.seq_len
  gen = torch.Generator().manual_seed(seed)
  tokens = torch.randint(8, m.vocab_size, (b, t + 1), generator=gen)

  def step():
    logits = forward(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, m.vocab_size), tokens[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with optimizer_scope():
      torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
      opt.step()
    return loss.item()
  return step


def time_train_step(config, compile_model=False, steps=5, seed=0):
  """Median step time (s) and compile/first-step time of one AdamW step."""
  step = make_train_step(config, compile_model, seed)
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  return median_seconds(step, steps), first


def matmul_peak(size=4096, repeats=5):
  a = torch.ones(size, size)
  a @ a
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    a @ a
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def time_attention(config, steps=5):
  """The model's attention core alone (SDPA, causal), forward + backward, × layers."""
  m = config.model
  hd = m.head_dim or m.d_model // m.num_heads
  b, t = config.train.batch_size, config.data.seq_len
  gen = torch.Generator().manual_seed(0)
  q = torch.randn(b, m.num_heads, t, hd, generator=gen, requires_grad=True)
  k, v = (torch.randn(b, m.num_kv_heads, t, hd, generator=gen, requires_grad=True)
          for _ in range(2))
  out_grad = torch.randn(b, m.num_heads, t, hd, generator=gen)
  groups = m.num_heads // m.num_kv_heads

  def step():
    kk, vv = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    F.scaled_dot_product_attention(q, kk, vv, is_causal=True).backward(out_grad)

  return median_seconds(step, steps) * m.num_layers


def tile(a, reps):
  """Repeats the columns `reps` times (the matmul skeleton's grouped-query k/v)."""
  return a if reps == 1 else a.repeat(1, reps)


def time_matmul_skeleton(config, steps=5):
  """`bench.matmul_skeleton` in PyTorch: the step's dense matmuls alone, fwd + bwd."""
  from bench import matmul_skeleton
  x, weights = matmul_skeleton.make_inputs(config)
  x = torch.tensor(x, requires_grad=True)
  weights = [torch.tensor(w, requires_grad=True) for w in weights]
  def step():
    for w in weights:
      w.grad = None
    matmul_skeleton.forward(x, weights, config.model.num_layers, torch.matmul,
                            tile).sum().backward()

  return median_seconds(step, steps)
