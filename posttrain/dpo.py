"""`run.py dpo`: Direct Preference Optimization against a frozen reference.

The policy starts as `--init_from` (full, or LoRA adapters on it) and the
reference is that same model, frozen: a copy for `full`, the base with the
adapters off for `lora` (no second copy). Sequence log-probabilities are summed
over the response tokens only. With h = (log π_c − log π_r) − (log ref_c − log ref_r):
- `sigmoid` (DPO): −(1−ε)·log σ(β·h) − ε·log σ(−β·h)   (ε = label smoothing, cDPO);
- `ipo`: (h − 1/(2β))².
Policy and reference run in the same dtype, so at step 0 h = 0 exactly: the
loss is ln 2 and every margin 0. Metrics use TRL's names.
"""
import jax
import jax.numpy as jnp

from data_pipeline import preference
from data_pipeline import preference_embedded
from data_pipeline.global_batch import process_row_block
from engine import checkpointing
from engine import flops
from engine import optimizer
from engine.train_step import with_mesh
from engine.stage import Stage
from engine.stage import eval_at
from evaluation import pair_scores
from posttrain.run_stage import run_stage
from posttrain.trainable import Trainable
from posttrain.trainable import base_meta
from posttrain.trainable import pretrain_workdir
from posttrain.trainable import check_resume
from posttrain.trainable import start_model


def sequence_logps(spec, model_params, batch):
  """(pairs, 2) float32: Σ log p(response token) for chosen and rejected."""
  rows = preference.rows_of(batch)
  logits = spec.apply(model_params, rows['inputs'], rows['positions'], rows['segment_ids'])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token = jnp.take_along_axis(logp, rows['targets'][..., None], axis=-1)[..., 0]
  return jnp.sum(token * rows['loss_mask'], axis=-1).reshape(-1, 2)


def dpo_losses(policy, reference, beta, loss_type, label_smoothing):
  """Per-pair losses and implicit rewards from (pairs, 2) sequence log-probs."""
  logratios = policy - reference  # (pairs, 2): chosen, rejected
  h = logratios[:, 0] - logratios[:, 1]
  if loss_type == 'ipo':
    losses = (h - 1.0 / (2.0 * beta)) ** 2
  else:
    losses = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
              - label_smoothing * jax.nn.log_sigmoid(-beta * h))
  return losses, beta * logratios


def dpo_sums(policy, reference, batch, cfg):
  valid = (batch['segment_ids'][:, 0, 0] > 0).astype(jnp.float32)
  losses, rewards = dpo_losses(policy, reference, cfg.beta, cfg.loss_type, cfg.label_smoothing)
  total = jnp.sum(losses * valid)
  sums = {'loss': total,
          'rewards/chosen': jnp.sum(rewards[:, 0] * valid),
          'rewards/rejected': jnp.sum(rewards[:, 1] * valid),
          'rewards/margins': jnp.sum((rewards[:, 0] - rewards[:, 1]) * valid),
          'rewards/accuracies': jnp.sum((rewards[:, 0] > rewards[:, 1]) * valid),
          'logps/chosen': jnp.sum(policy[:, 0] * valid),
          'logps/rejected': jnp.sum(policy[:, 1] * valid),
          'count': jnp.sum(valid)}
  return total, sums


class DpoStage(Stage):
  name = 'dpo'
  loss_is_nll = False

  def __init__(self, config, workdir, init_from):
    self.config, self.workdir = config, workdir
    self.init, self.mesh, self.spec, base = start_model(config, workdir, init_from, 'dpo')
    self.tokenizer = self.init.tokenizer
    self.method = config.dpo.method
    t = self.trainable = Trainable(self.method, self.spec, base, config.sft,
                                   keep_reference=True)
    self.param_shardings, self.init_params = t.param_shardings, t.init_params
    self.frozen, self.frozen_shardings = t.frozen, t.frozen_shardings
    self.train_examples, self.train_stats = preference.load_pairs(
        config, self.tokenizer, tuple(config.data.train_files),
        preference_embedded.train_pairs, 'the training pairs')
    self.eval_examples, self.eval_stats = preference.load_pairs(
        config, self.tokenizer, tuple(config.data.eval_files),
        preference_embedded.validation_pairs, 'the held-out pairs')
    self.tx = optimizer.make_optimizer(config.train)
    self.schedule = optimizer.learning_rate_schedule(config.train)
    row_block, num_blocks = process_row_block(self.mesh, config.train.batch_size)
    self.data_iter = preference.train_dataset(config, self.train_examples, row_block, num_blocks)
    self.meta = dict(checkpointing.metadata(config, self.tokenizer, self.mesh), stage='dpo',
                     method=self.method, base=base_meta(self.init), **t.meta,
                     kinds=self.eval_stats['kinds'], pretrain_workdir=pretrain_workdir(self.init))
    self.loss_sums = self._loss_sums
    # Policy forward + backward and a reference forward, over two sequences per pair (the
    # useful work: the policy's value forward, see _paired_logps, is not counted).
    self.tokens_per_step = 2 * config.train.batch_size * config.data.seq_len
    self.flops_per_token = flops.train_flops_per_token(config.model, config.data.seq_len) * 4 / 3
    self._score_fn = with_mesh(self.mesh, jax.jit(
        self.implicit_rewards, out_shardings=pair_scores.replicated_out(self.mesh)))

  def _loss_sums(self, params, frozen, batch):
    policy, reference = self._paired_logps(params, frozen, batch)
    return dpo_sums(policy, reference, batch, self.config.dpo)

  def _paired_logps(self, params, frozen, batch):
    """Policy and reference log-probs whose values come from one vmapped forward over
    the two param sets: the same kernels on the same values, so at step 0 they are
    bitwise equal (two separately compiled forwards differ in the last bits).

    The gradient comes from a separate policy forward, added as `g - stop_gradient(g)`
    (exactly 0 in value): differentiating the vmapped forward would also run the
    reference's backward pass and throw it away (the tiny DPO preset on 2 CPU cores:
    0.71 → 0.47–0.52 s a step; loss and gradients bitwise the same at step 0)."""
    t = self.trainable
    policy_params = t.model_params(params, frozen)
    stacked = jax.tree.map(lambda a, b: jax.lax.stop_gradient(jnp.stack([a, b])),
                           policy_params, t.reference_params(frozen))
    both = jax.vmap(lambda p: sequence_logps(self.spec, p, batch))(stacked)
    with_grad = sequence_logps(self.spec, policy_params, batch)
    return both[0] + (with_grad - jax.lax.stop_gradient(with_grad)), both[1]

  def implicit_rewards(self, params, frozen, batch):
    t = self.trainable
    policy = sequence_logps(self.spec, t.model_params(params, frozen), batch)
    reference = sequence_logps(self.spec, t.reference_params(frozen), batch)
    return self.config.dpo.beta * (policy - reference)

  def start_params(self):
    return self.trainable.start

  def check_compatible(self, meta):
    check_resume(meta, self.config, self.tokenizer, self.meta, 'dpo.method')

  def evaluate(self, params):
    return pair_scores.eval_metrics(self._score_fn, params, self.frozen, self.eval_examples,
                                    self.eval_stats['kinds'], self.config, self.mesh)


def run_dpo(config, workdir, init_from, resume=True, on_ready=None):
  def plan(stage):
    return (f'dpo: {stage.method}, {config.dpo.loss_type} loss, beta {config.dpo.beta}; '
            f'{len(stage.train_examples):,} training pairs, {len(stage.eval_examples):,} held out')

  def outcome(result):
    if 'eval_accuracy' in result:
      return (f'dpo: step {result["step"]}{eval_at(result)}, held-out implicit-reward accuracy '
              f'{result["eval_accuracy"]:.3f}, margin {result["eval_margin"]:.3f}')
    return None
  return run_stage(DpoStage(config, workdir, init_from), workdir, resume, on_ready, plan, outcome)
