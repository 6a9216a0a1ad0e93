"""`run.py reward`: a reward model learns to score the chosen answer above the rejected.

The transformer (from `--init_from`, full or LoRA) plus a scalar head read at
the last real token of each response (its end-of-turn); Bradley–Terry loss
−log σ(r_chosen − r_rejected − margin) (+ optional centring), on the engine.
Metrics: `accuracy`, `margin`, mean/min/max reward; held-out accuracy per kind.
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
from model import scalar_head
from posttrain.run_stage import run_stage
from posttrain.trainable import Trainable
from posttrain.trainable import base_meta
from posttrain.trainable import check_resume
from posttrain.trainable import start_model


def pair_scores_fn(spec, model_params_fn):
  """scores(params, frozen, batch) -> (pairs, 2) float32 rewards."""
  def scores(params, frozen, batch):
    rows = preference.rows_of(batch)
    hidden = spec.hidden_states(model_params_fn(params['lm'], frozen), rows['inputs'],
                                rows['positions'], rows['segment_ids'])
    return scalar_head.scores(params['head'], hidden, rows['segment_ids'])[:, 0].reshape(-1, 2)
  return scores


def bradley_terry_sums(scores, batch, center_coef, use_margin):
  """Sums over real pairs (padding pairs have segment id 0) for the engine."""
  valid = (batch['segment_ids'][:, 0, 0] > 0).astype(jnp.float32)
  chosen, rejected = scores[:, 0], scores[:, 1]
  margin = batch['margin'][:, 0] if use_margin else 0.0
  loss = -jax.nn.log_sigmoid(chosen - rejected - margin) + center_coef * (chosen + rejected) ** 2
  both = jnp.stack([chosen, rejected], axis=1)
  big = jnp.float32(3e38)
  sums = {'loss': jnp.sum(loss * valid), 'accuracy': jnp.sum((chosen > rejected) * valid),
          'margin': jnp.sum((chosen - rejected) * valid),
          'reward_mean': jnp.sum((chosen + rejected) / 2 * valid),
          'reward_min': jnp.min(jnp.where(valid[:, None] > 0, both, big)),
          'reward_max': jnp.max(jnp.where(valid[:, None] > 0, both, -big)),
          'count': jnp.sum(valid)}
  return jnp.sum(loss * valid), sums


class RewardStage(Stage):
  name = 'reward'
  loss_is_nll = False

  def __init__(self, config, workdir, init_from):
    self.config, self.workdir = config, workdir
    self.init, self.mesh, self.spec, base = start_model(config, workdir, init_from, 'reward')
    self.tokenizer = self.init.tokenizer
    self.method = config.reward.method
    t = self.trainable = Trainable(self.method, self.spec, base, config.sft)
    self.frozen, self.frozen_shardings = t.frozen, t.frozen_shardings
    self.param_shardings = {'lm': t.param_shardings, 'head': scalar_head.shardings(self.mesh)}
    d = config.model.d_model
    self.init_params = lambda key: {'lm': t.init_params(key), 'head': scalar_head.init(d)}
    self._start = None if t.start is None else {
        'lm': t.start, 'head': jax.device_put(scalar_head.init(d), self.param_shardings['head'])}
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
    self.meta = dict(checkpointing.metadata(config, self.tokenizer, self.mesh), stage='reward',
                     method=self.method, base=base_meta(self.init), **t.meta,
                     kinds=self.eval_stats['kinds'])
    self.scores = pair_scores_fn(self.spec, t.model_params)
    self.loss_sums = lambda params, frozen, batch: bradley_terry_sums(
        self.scores(params, frozen, batch), batch, config.reward.center_coef,
        config.reward.use_margin)
    # Two sequences per pair; the head is negligible next to the transformer.
    self.tokens_per_step = 2 * config.train.batch_size * config.data.seq_len
    self.flops_per_token = flops.train_flops_per_token(config.model, config.data.seq_len)
    self._score_fn = with_mesh(self.mesh, jax.jit(
        self.scores, out_shardings=pair_scores.replicated_out(self.mesh)))

  def start_params(self):
    return self._start

  def check_compatible(self, meta):
    check_resume(meta, self.config, self.tokenizer, self.meta, 'reward.method')

  def evaluate(self, params):
    return pair_scores.eval_metrics(self._score_fn, params, self.frozen, self.eval_examples,
                                    self.eval_stats['kinds'], self.config, self.mesh)


def run_reward(config, workdir, init_from, resume=True, on_ready=None):
  def plan(stage):
    s = stage.train_stats
    return (f'reward: {stage.method}; {len(stage.train_examples):,} training pairs '
            f'({s["identical"]} with chosen == rejected and {s["no_room"]} without room for a '
            f'response skipped, {s["truncated"]} responses truncated), '
            f'{len(stage.eval_examples):,} held out; kinds {", ".join(s["kinds"])}')

  def outcome(result):
    if 'eval_accuracy' not in result:
      return None
    kinds = ', '.join(f'{k[len("eval_accuracy/"):]} {v:.3f}' for k, v in result.items()
                      if k.startswith('eval_accuracy/'))
    return (f'reward: step {result["step"]}{eval_at(result)}, held-out accuracy '
            f'{result["eval_accuracy"]:.3f} ({kinds})')
  return run_stage(RewardStage(config, workdir, init_from), workdir, resume, on_ready, plan,
                   outcome)
