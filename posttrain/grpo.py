"""`run.py grpo`: GRPO with verifiable rewards — no critic, G answers per prompt,
advantages relative to the group (posttrain/grpo_loss.py), rewards from verifiers
that are the report's own metrics (posttrain/grpo_rewards.py).

One engine step is one generation batch over one state (one resume point):
1. rollout: P = train.batch_size / G prompts, G answers each, in one jitted batch
   from the KV-cache sampler with each prompt's prefill shared (grpo_rollout.py);
2. rewards on the host (the answers' text), aggregated, advantages per group; with
   grpo.drop_zero_std_groups, groups whose rewards are all equal are replaced by
   groups of freshly drawn prompts (at most grpo.max_resample_rounds batches);
3. training: grpo.num_iterations updates over the batch (train.microbatches each).
The sampling key is in the state and the prompt iterator's position in the
checkpoint, so a resumed run is bitwise the uninterrupted one.
"""
import jax
import numpy as np

from configs.errors import UserError
from data_pipeline import chat_template
from data_pipeline import grpo_prompts
from data_pipeline import prompts as prompts_lib
from data_pipeline.global_batch import process_row_block
from engine import checkpointing
from engine import flops
from engine import optimizer
from engine import paths
from engine import restore_reward
from engine.trainer import Stage
from model import scalar_head
from posttrain import grpo_rewards
from posttrain import grpo_step
from posttrain.trainable import Trainable
from posttrain.trainable import base_meta
from posttrain.trainable import check_resume
from posttrain.trainable import pretrain_workdir
from posttrain.trainable import start_model


class GrpoStage(Stage):
  name = 'grpo'
  loss_is_nll = False

  def __init__(self, config, workdir, init_from, reward_from=None):
    self.config, self.workdir, cfg = config, workdir, config.grpo
    g, batch = cfg.num_generations, config.train.batch_size
    if batch % g:
      raise UserError(f'grpo.num_generations={g} must divide train.batch_size={batch} (the '
                      'answers of one step: prompts × num_generations)')
    self.num_generations, self.prompts_per_step = g, batch // g
    self.rewards = grpo_rewards.Rewards(cfg.rewards)
    if self.rewards.uses_reward_model:
      restore_reward.check_reward_from(reward_from)
    elif reward_from:
      raise UserError('--reward_from is given but grpo.rewards has no reward_model; add '
                      'reward_model:WEIGHT to grpo.rewards or drop --reward_from')
    self.init, self.mesh, self.spec, base = start_model(config, workdir, init_from, 'grpo')
    self.tokenizer = tok = self.init.tokenizer
    shards = self.mesh.shape['data'] * self.mesh.shape['fsdp']
    if self.prompts_per_step % shards:
      raise UserError(f'train.batch_size / grpo.num_generations = {self.prompts_per_step} '
                      f'prompts per step do not split over the mesh\'s data × fsdp = {shards} '
                      'devices; use a multiple of it')
    self.max_prompt_len = config.data.seq_len - cfg.max_completion_length
    if self.max_prompt_len < 4:
      raise UserError(f'grpo.max_completion_length={cfg.max_completion_length} leaves no room '
                      f'for a prompt in data.seq_len={config.data.seq_len}; lower it or raise '
                      'data.seq_len')
    self.eot = tok.chat_ids[chat_template.END_OF_TURN]
    records = grpo_prompts.read(tuple(config.data.train_files))
    self.rewards.check_prompts(records)
    self.records, rows, self.prompt_stats = grpo_prompts.tokenize(records, tok,
                                                                  self.max_prompt_len)
    self.prompt_rows = rows
    self.rewards.probe(self.records[:g])  # a user function's mistake before any work
    self.policy = Trainable(cfg.method, self.spec, base, config.sft,
                            keep_reference=cfg.beta > 0)
    self.param_shardings, self.init_params = self.policy.param_shardings, self.policy.init_params
    self.frozen = {'base': self.policy.frozen}
    self.frozen_shardings = {'base': self.policy.frozen_shardings}
    self.reward_spec = None
    if self.rewards.uses_reward_model:
      self.reward_spec, reward, rtok, _, _, _ = restore_reward.load_reward_model(
          reward_from, config, mesh=self.mesh)
      if rtok.fingerprint != tok.fingerprint:
        raise UserError('--reward_from was trained with another tokenizer than --init_from; '
                        'give a reward model trained from the same tokenizer')
      self.frozen['reward'] = reward
      self.frozen_shardings['reward'] = {'lm': self.reward_spec.param_shardings,
                                         'head': scalar_head.shardings(self.mesh)}
    self.extra = {'rng': np.asarray(jax.random.key_data(jax.random.key(config.seed + 1)))}
    updates = config.train.copy_and_resolve_references()
    updates.steps = config.train.steps * cfg.num_iterations  # optimizer updates in all
    self.tx = optimizer.make_optimizer(updates)
    self.schedule = optimizer.learning_rate_schedule(updates)
    self.num_prompts = len(self.records)
    row_block, num_blocks = process_row_block(self.mesh, self.prompts_per_step)
    data_config = config.copy_and_resolve_references()
    data_config.train.batch_size = self.prompts_per_step  # the stream yields prompts
    self.data_iter = prompts_lib.train_dataset(data_config, rows, row_block, num_blocks)
    self.meta = dict(checkpointing.metadata(config, tok, self.mesh), stage='grpo',
                     method=cfg.method, base=base_meta(self.init), **self.policy.meta,
                     rewards=cfg.rewards, pretrain_workdir=pretrain_workdir(self.init))
    if self.rewards.uses_reward_model:
      self.meta['reward'] = {'directory': paths.resolve(reward_from, '--reward_from')}
    self.tokens_per_step = batch * config.data.seq_len
    # Per token: rollout ~2N, a trainer forward (old log-probs), μ forward+backward.
    self.flops_per_token = flops.train_flops_per_token(config.model, config.data.seq_len) / 3 * (
        2 + 3 * cfg.num_iterations + (1 if cfg.beta else 0))

  def start_params(self):
    start = self.policy.start
    if start is None:  # LoRA: adapters from the seed, B = 0 (step 0 is the base exactly)
      start = jax.jit(self.policy.init_params, out_shardings=self.policy.param_shardings)(
          jax.random.key(self.config.seed))
    return start

  def check_compatible(self, meta):
    check_resume(meta, self.config, self.tokenizer, self.meta, 'grpo.method')

  def make_step_fn(self, shardings):
    return grpo_step.make_step(self, shardings)
