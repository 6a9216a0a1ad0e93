"""What a stage gives the training loop (engine/trainer.py), and one message helper."""


class Stage:
  """What a stage gives the loop (attributes and methods; subclass or duck-type).

  name: the command's name, for messages. config, workdir, mesh, tokenizer.
  tx, schedule: optax transformation and its learning-rate schedule.
  param_shardings: shardings of the trainable params tree.
  init_params(key): the trainable params at step 0 (traceable: also gives shapes).
  start_params(): concrete step-0 params instead of init_params (fine-tuning), or None.
  frozen, frozen_shardings: what the loss reads but never trains ({} when none).
  loss_sums(params, frozen, batch): (objective sum, {'loss': sum, 'count': n, ...}).
  data_iter: local batches; get_state()/set_state() of its shards.
  evaluate(params): dict of eval metrics (every process calls it), or None.
  meta: checkpoint metadata; check_compatible(meta) raises UserError on a mismatch.
  flops_per_token, tokens_per_step: for MFU.
  """
  frozen, frozen_shardings = {}, {}
  extra = None  # the stage's own state beside params/optimizer (dict of arrays), or None
  make_step_fn = None  # (shardings) -> step(state, frozen, batch) replacing make_step's
  loss_is_nll = True  # the loss is a token NLL (so perplexity = exp(loss) is logged)

  def start_params(self):
    return None

  def evaluate(self, params):
    return None


def eval_at(result):
  """' (evaluated at step N)' when a run stopped early and its last evaluation is older."""
  if result.get('eval_step') is None or result['eval_step'] == result['step']:
    return ''
  return f' (evaluated at step {result["eval_step"]})'
