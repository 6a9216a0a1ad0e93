"""Where one train step's time goes, ours (jax.profiler) beside the PyTorch peer's
under `torch.compile` (torch.profiler), on the same shapes, by category:
matmul, attention, norm/activation, loss, optimizer, other.

`run.py bench --profile --with_torch` prints the table. How ops are sorted:
- ours: each XLA op (or fusion) by the source file of its HLO metadata: the
  optimizer (optax, gradient accumulation and scaling in engine/train_step.py),
  the attention core (model/attention.py), the loss (engine/lm_loss.py); the
  remaining dots are `matmul`; embedding gathers/scatters and pure layout ops
  `other`; the rest (RMSNorm, RoPE, SwiGLU, residuals) `norm/activation`.
- PyTorch: each op's self time, by its name or its nearest enclosing op's:
  inside clipping and AdamW `optimizer`; SDPA `attention`; log-softmax / NLL
  `loss`; mm/addmm/bmm `matmul`; Inductor's fused C++ kernels
  `norm/activation` (the embedding's `other`); the rest, and the step's time
  outside any op (Python, the autograd engine), `other`.
XLA runs ops side by side on the cores, so our op times add up to more than the
step: each side's categories are scaled to add up to its measured step time.
"""
import collections
import re
import jax

from bench import step_profile
from bench import synthetic
from bench import timing

CATEGORIES = ('matmul', 'attention', 'norm/activation', 'loss', 'optimizer', 'other')
_FRAME = re.compile(r'stack_frame_id=(\d+)')
# The innermost file of an op's call stack that decides its category, in stack order.
_DECIDING = (('/optax/', 'optimizer'), ('engine/train_step.py', 'optimizer'),
             ('engine/optimizer.py', 'optimizer'), ('model/attention.py', 'attention'),
             ('engine/lm_loss.py', 'loss'), ('model/', 'model'))


def _table(text, section):
  """{id: text} of one of the HLO module's stack tables (FileNames, StackFrames, ...)."""
  start = text.find('\n' + section + '\n')
  if start < 0:
    return {}
  rows = {}
  for line in text[start + len(section) + 2:].splitlines():
    m = re.match(r'(\d+) (.*)', line)
    if not m:
      break
    rows[int(m.group(1))] = m.group(2)
  return rows


class CallStacks:
  """Each op's Python call stack, from the optimized HLO's stack frame tables."""

  def __init__(self, text):
    self.files = {i: v.strip('"') for i, v in _table(text, 'FileNames').items()}
    self.locations = {i: int(re.search(r'file_name_id=(\d+)', v).group(1))
                      for i, v in _table(text, 'FileLocations').items()}
    self.frames = {i: tuple(int(x) for x in re.findall(r'=(\d+)', v))
                   for i, v in _table(text, 'StackFrames').items()}

  def files_of(self, frame_id):
    """The files of the stack from the innermost frame outwards."""
    out, seen = [], set()
    while frame_id in self.frames and frame_id not in seen:
      seen.add(frame_id)
      location, parent = self.frames[frame_id]
      out.append(self.files.get(self.locations.get(location), ''))
      frame_id = parent
    return out


def jax_category(hlo, stacks, name):
  """The category of the XLA op `name` (see the module doc)."""
  line = hlo.lines.get(name, '')
  frame = _FRAME.search(line) or _FRAME.search(hlo.body(name))
  decided = None
  for path in stacks.files_of(int(frame.group(1))) if frame else ():
    decided = next((c for part, c in _DECIDING if part in path), None)
    if decided:
      break
  if decided and decided != 'model':
    return decided
  if hlo.matmuls(name):
    return 'matmul'
  body = hlo.body(name)
  if re.search(r' (gather|scatter)\(', body) or hlo.kind(name) == 'layout copy':
    return 'other'  # the embedding lookup and its gradient; pure layout changes
  return 'norm/activation' if decided else 'other'


def scaled(seconds, step_s):
  """{category: seconds} rescaled to add up to the step's wall time."""
  total = sum(seconds.values()) or 1.0
  return {c: seconds.get(c, 0.0) * step_s / total for c in CATEGORIES}


def profile_jax(config, trace_dir, steps=3):
  """({category: seconds per step}, step wall seconds) of our jitted step."""
  spec, state, step_fn, batch = synthetic.train_setup(config)
  with jax.set_mesh(spec.mesh):
    compiled = step_fn.jitted.lower(state, batch).compile()
    text = compiled.as_text()
    hlo, stacks = step_profile.OptimizedHlo(text), CallStacks(text)
    live = {'state': state}

    def one_step():
      live['state'], metrics = compiled(live['state'], batch)
      jax.block_until_ready(metrics)

    one_step()
    step_s = timing.median_seconds(one_step, steps)
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
      one_step()
    jax.profiler.stop_trace()
  seconds = collections.Counter()
  for name, (op_s, _) in step_profile._op_times(trace_dir, steps).items():
    seconds[jax_category(hlo, stacks, name)] += op_s
  return scaled(seconds, step_s), step_s


def _torch_name_category(name):
  name = name.lower()
  if name == 'optimizer':
    return 'optimizer'
  if 'scaled_dot_product' in name or 'flash_attention' in name:
    return 'attention'
  if 'log_softmax' in name or 'nll_loss' in name or 'cross_entropy' in name:
    return 'loss'
  if re.fullmatch(r'aten::(mm|addmm|bmm|matmul|linear)', name):
    return 'matmul'
  if 'cpp_fused' in name:
    return 'other' if 'embedding' in name else 'norm/activation'
  return None


def torch_category(event):
  """The category of a torch.profiler event's self time: that of the event or of its
  nearest enclosing event with a known name (see the module doc)."""
  while event is not None:
    category = _torch_name_category(event.name)
    if category:
      return category
    event = event.cpu_parent
  return 'other'


def profile_torch(config, steps=3):
  """({category: seconds per step}, step wall seconds) of the torch.compile peer."""
  import torch._inductor.config as inductor_config
  from torch.profiler import ProfilerActivity
  from torch.profiler import profile
  from torch.profiler import record_function

  from bench import torch_reference
  inductor_config.cpp.enable_kernel_profile = True  # each fused kernel is its own event
  step = torch_reference.make_train_step(config, compile_model=True,
                                         optimizer_scope=lambda: record_function('optimizer'))
  step()
  step_s = timing.median_seconds(step, steps)
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  seconds = collections.Counter()
  for event in prof.events():
    seconds[torch_category(event)] += event.self_cpu_time_total / 1e6 / steps
  seconds['other'] += max(0.0, step_s - sum(seconds.values()))  # Python, autograd engine
  return scaled(seconds, step_s), step_s


def side_by_side(config, trace_dir, steps=3):
  ours, ours_s = profile_jax(config, trace_dir, steps)
  theirs, theirs_s = profile_torch(config, steps)
  return {'ours': ours, 'ours_step_s': ours_s, 'torch_compile': theirs,
          'torch_compile_step_s': theirs_s, 'trace_dir': trace_dir}


def format_table(r):
  lines = ['| per step | ours (XLA) | torch.compile |', '|---|---:|---:|']
  for c in CATEGORIES:
    lines.append(f'| {c} | {r["ours"][c]:.3f} s ({r["ours"][c] / r["ours_step_s"]:.0%}) | '
                 f'{r["torch_compile"][c]:.3f} s '
                 f'({r["torch_compile"][c] / r["torch_compile_step_s"]:.0%}) |')
  lines.append(f'| **step** | **{r["ours_step_s"]:.3f} s** | '
               f'**{r["torch_compile_step_s"]:.3f} s** |')
  return '\n'.join(lines)
