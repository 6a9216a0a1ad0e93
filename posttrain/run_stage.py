"""What every post-training command does around its stage: the engine's checks first,
the start model's tokenizer copied into the workdir, one line on what will be trained,
training, and one line with the result (process 0 prints)."""
import jax

from engine.trainer import Trainer
from posttrain import init_from as init_from_lib


def run_stage(stage, workdir, resume, on_ready, plan_line, result_line=None):
  """`on_ready` runs once every check passed (that is when config.json may be replaced);
  `plan_line(stage)` and `result_line(result)` give the two lines (None: no line)."""
  trainer = Trainer(stage, resume)
  primary = jax.process_index() == 0
  if primary:
    init_from_lib.copy_tokenizer(stage.init, workdir)
    print(plan_line(stage), flush=True)
  if on_ready is not None:
    on_ready()
  result = trainer.run()
  line = result_line(result) if primary and result_line is not None else None
  if line:
    print(line, flush=True)
  return result
