"""Candidate speed-ups of the GPU train step, each measured against the same
step in one run, plus a profile of the base step (per device line: busiest
kernels and ops, how busy the streams are).

  python bench/gpu_experiments.py --out=FILE [--smoke] [--budget_s=330]

A variant is '+'-joined features applied on top of today's code for one
measurement (monkeypatches, so nothing here changes the model for others):
- `hoist`: one lax.cond per step around the whole block stack instead of one
  per attention call (an XLA conditional on GPU waits for its predicate on the host);
- `nocond`: the packed kernel with no overflow branch at all (what the cond costs);
- `fuse_proj`: q, k, v as one matmul and gate, up as one (weights concatenated per step);
- `save_attn`: remat 'dots' also keeps the fused attention's forward outputs
  (else the backward pass recomputes the attention forward);
- `remat_none`: no rematerialisation;
- `profile`: trace three more steps and summarise them (bench/gpu_trace.py);
- `docs8`, `flatopt`, `sgdopt`, `plainloss`: options of `jax_step.measure` (at most
  8 documents a row; AdamW over one flat vector; plain SGD, the least any update
  costs; the loss without its custom VJP).
Groups run in their own processes, each with its XLA_FLAGS. `--smoke`: tiny
shapes on CPU with the cuDNN call replaced by `reference` (checks the plumbing).
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CMDBUF_ALL = ('--xla_gpu_enable_command_buffer='
              'FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE')
STEP_OPTIONS = ('docs8', 'flatopt', 'sgdopt', 'plainloss')  # passed to jax_step.measure
GROUPS = [  # (name, XLA_FLAGS, shape, variants in order of priority)
    # Where gpt2_124m's ~12 ms of non-matmul work goes after the loss change: the op
    # profile, and what the optimizer's ~110 per-tensor updates cost (run: --groups=next).
    ('next', '', 'gpt2_124m', ['profile', 'flatopt', 'sgdopt', 'docs8', 'docs8+flatopt']),
    ('default', '', 'gpt2_124m', ['profile', 'hoist', 'nocond', 'fuse_proj', 'hoist+fuse_proj']),
    ('default_llama', '', 'llama_1b', ['base', 'save_attn', 'hoist+save_attn', 'remat_none']),
    ('cmdbuf_cond', CMDBUF_ALL, 'gpt2_124m', ['base', 'hoist']),
    ('no_triton_gemm', '--xla_gpu_enable_triton_gemm=false', 'gpt2_124m', ['base']),
]
COST_S = {'gpt2_124m': 35, 'llama_1b': 70, 'tiny': 5}  # per variant, to skip in time


def save_attention_policy(prim, *args, **params):
  import jax
  return (prim.name.startswith('dot_product_attention_fwd') or
          jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims(prim, *args, **params))


def hoisted_residual_stream(self, tokens, positions, segment_ids, soft_prompt=None):
  import jax
  from model import attention as attention_lib
  from model import transformer
  x, b, t = self.embed_tokens(tokens, positions, soft_prompt)
  kind = attention_lib.resolve_kind(self.cfg.attention, self.cfg.dtype,
                                    transformer.head_dim(self.cfg))
  mask = attention_lib.self_attention_inputs(segment_ids, kind)
  rope_cs = self.rope_tables(positions)

  def run(x, mask):
    for block in self.blocks():
      if self.cfg.remat == 'none':
        x = block(x, b, t, rope_cs, mask)
      else:
        x = transformer.nnx.remat(lambda blk, h: blk(h, b, t, rope_cs, mask),
                                  policy=transformer.REMAT_POLICIES[self.cfg.remat])(block, x)
    return x

  if kind == 'cudnn':
    x = jax.lax.cond(mask['overflow'], lambda x: run(x, dict(mask, branch='masked')),
                     lambda x: run(x, dict(mask, branch='fused')), x)
  else:
    x = run(x, mask)
  return x, b, t


def fused_project_qkv(self, x, batch, length, rope_cs):
  import jax.numpy as jnp
  from model import transformer
  cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
  d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, transformer.head_dim(cfg)
  w = jnp.concatenate([self.wq[...].reshape(d, h * hd), self.wk[...].reshape(d, k * hd),
                       self.wv[...].reshape(d, k * hd)], axis=1).astype(dtype)
  q, kk, v = jnp.split(x @ w, [h * hd, (h + k) * hd], axis=1)
  q = transformer.rope(q.reshape(batch, length, h, hd), rope_cs)
  kk = transformer.rope(kk.reshape(batch, length, k, hd), rope_cs)
  return q, kk, v.reshape(batch, length, k, hd)


def fused_mlp(self, x):
  import jax
  import jax.numpy as jnp
  w = jnp.concatenate([self.w_gate[...], self.w_up[...]], axis=1).astype(self.dtype)
  gate, up = jnp.split(x @ w, 2, axis=1)
  return (jax.nn.silu(gate) * up) @ self.w_down[...].astype(self.dtype)


def fake_cudnn_for_cpu():
  """--smoke on CPU: the cudnn kind runs `reference` on the packed mask."""
  from model import attention, attention_cudnn
  attention_cudnn.unsupported_reason = lambda *a: None

  def packed_attention(q, k, v, packed):
    import jax
    mask = attention_cudnn.packed_mask(packed['seqlens'], packed['offsets'], q.shape[1])
    ref = lambda q, k, v: attention.reference(q, k, v, mask)  # noqa: E731
    if packed.get('branch'):
      return ref(q, k, v)
    return jax.lax.cond(packed['overflow'], ref, ref, q, k, v)
  attention_cudnn.packed_attention = packed_attention


@contextlib.contextmanager
def patched(features, model_cfg):
  from model import transformer
  saved = (transformer.Transformer.residual_stream, transformer.Attention.project_qkv,
           transformer.MLP.__call__, dict(transformer.REMAT_POLICIES))
  from model import attention_cudnn
  saved_attn = attention_cudnn.packed_attention
  try:
    if 'hoist' in features:
      transformer.Transformer.residual_stream = hoisted_residual_stream
    if 'fuse_proj' in features:
      transformer.Attention.project_qkv = fused_project_qkv
      transformer.MLP.__call__ = fused_mlp
    if 'save_attn' in features:
      transformer.REMAT_POLICIES['dots'] = save_attention_policy
    if 'remat_none' in features:
      model_cfg.remat = 'none'
    if 'nocond' in features:
      attention_cudnn.packed_attention = (
          lambda q, k, v, p, f=saved_attn: f(q, k, v, dict(p, branch='fused')))
    yield
  finally:
    (transformer.Transformer.residual_stream, transformer.Attention.project_qkv,
     transformer.MLP.__call__) = saved[:3]
    transformer.REMAT_POLICIES.clear()
    transformer.REMAT_POLICIES.update(saved[3])
    attention_cudnn.packed_attention = saved_attn


def run_group(args):
  import gc
  import jax
  from bench import gpu_check, jax_step
  if args.smoke:
    fake_cudnn_for_cpu()
  shape = 'tiny' if args.smoke else args.shape
  preset, batch, seq_len, remat = (gpu_check.SMOKE_SHAPES['tiny'] if args.smoke
                                   else gpu_check.SHAPES[shape])
  peak = gpu_check.nominal_peak(jax.devices()[0].device_kind, 0)
  result = {'group': args.group, 'xla_flags': args.xla_flags, 'shape': shape,
            'device_kind': jax.devices()[0].device_kind, 'jax': jax.__version__, 'rows': []}
  deadline = time.time() + args.budget_s
  for variant in args.variants.split(','):
    row = {'variant': variant}
    if time.time() > deadline - COST_S[shape]:
      row['skipped'] = 'out of time budget'
    else:
      features = set(variant.split('+'))
      cfg = gpu_check.model_config(preset, seq_len, remat)
      trace_dir = os.path.join(args.trace_root, f'{args.group}-{variant}') if (
          'profile' in features) else None
      try:
        kernel = '/'.join(['cudnn'] + [o for o in STEP_OPTIONS if o in features])
        with patched(features, cfg):
          row.update(jax_step.measure(cfg, kernel, batch, seq_len, steps=args.steps,
                                      peak=peak, trace_dir=trace_dir))
      except Exception as e:  # noqa: BLE001 -- record, go on with the next
        row['error'] = f'{type(e).__name__}: {str(e)[:1500]}'
      gc.collect()
    print(json.dumps({k: v for k, v in row.items() if k != 'trace'}), flush=True)
    result['rows'].append(row)
    gpu_check.write(args.part_out, result)


def orchestrate(args):
  start = time.time()
  merged = {'smoke': args.smoke, 'groups': []}
  groups = [g for g in GROUPS if not args.groups or g[0] in args.groups.split(',')]
  for i, (name, flags, shape, variants) in enumerate(groups):
    left = args.budget_s - (time.time() - start)
    share = left / (len(groups) - i) if shape != 'llama_1b' else left * 0.6
    budget = min(left, max(share, COST_S[shape] + 20))
    if left < COST_S[shape] + 20:
      merged['groups'].append({'group': name, 'skipped': 'out of time budget'})
      continue
    part_out = f'{args.out}.{name}.json'
    env = dict(os.environ)
    if flags and not args.smoke:  # GPU flags would abort a CPU backend
      env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + flags).strip()
    cmd = [sys.executable, os.path.abspath(__file__), '--group', name, '--shape', shape,
           '--variants', ','.join(variants), f'--xla_flags={flags}', '--part_out', part_out,
           f'--budget_s={budget:.0f}', f'--steps={args.steps}',
           f'--trace_root={args.trace_root}'] + (['--smoke'] if args.smoke else [])
    try:
      proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=budget + 60, check=False)
      code = proc.returncode
    except subprocess.TimeoutExpired:
      code = 'timeout'
    part = json.load(open(part_out)) if os.path.exists(part_out) else {'group': name}
    part['returncode'] = code
    merged['groups'].append(part)
    merged['wall_s'] = time.time() - start
    from bench import gpu_check
    gpu_check.write(args.out, merged)
  for g in merged['groups']:
    for r in g.get('rows', []):
      what = (f'{r["tokens_per_s"]:10,.0f} tok/s  MFU {r["mfu"] or 0:.1%}  '
              f'{r["peak_gpu_mem_gib"]:.1f} GiB' if 'tokens_per_s' in r else
              (r.get('error') or r.get('skipped'))[:200])
      print(f'{g["group"]:15s} {r["variant"]:18s} {what}', flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default='gpu_experiments.json')
  p.add_argument('--smoke', action='store_true')
  p.add_argument('--budget_s', type=float, default=330.0)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--groups', default='', help='comma list of GROUPS names; all if empty')
  p.add_argument('--trace_root', default='/tmp/gpu_experiments_traces')
  p.add_argument('--group'), p.add_argument('--shape'), p.add_argument('--variants')
  p.add_argument('--xla_flags', default=''), p.add_argument('--part_out')
  args = p.parse_args()
  if args.smoke:
    args.steps = 2
  run_group(args) if args.group else orchestrate(args)


if __name__ == '__main__':
  main()
