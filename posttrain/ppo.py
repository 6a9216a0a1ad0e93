"""`run.py ppo`: RLHF with PPO — actor, critic, frozen reference and reward model.

One engine step is one PPO iteration over one state (one resume point):
1. rollout: the actor samples answers to a batch of prompts with the KV-cache
   sampler under jit (temperature, top-p, stop at end-of-turn);
2. scoring: the reward model scores each answer at its last real token, plus
   optional rule terms; a per-token KL penalty against the reference; GAE over
   response tokens; advantage whitening;
3. training: `ppo.epochs` × `ppo.minibatches` updates of the clipped policy loss
   and the clipped value loss (+ optional entropy bonus), with separate
   optimizers for actor and critic.
The state holds actor, critic, both optimizer states, the sampling RNG key and
the KL coefficient; the prompt iterator's state is saved with it, so a resumed
run is bitwise the uninterrupted one.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs.errors import UserError
from data_pipeline import chat_template
from data_pipeline import prompts as prompts_lib
from data_pipeline.global_batch import process_row_block
from engine import checkpointing
from engine import flops
from engine import optimizer
from engine import restore_reward
from engine import paths
from engine.train_step import with_mesh
from engine.stage import Stage
from evaluation import chat_metrics
from model import decode
from model import scalar_head
from posttrain import ppo_loss
from posttrain.rollout_sequences import build_sequences
from posttrain.rollout_sequences import token_logps
from posttrain.trainable import Trainable
from posttrain.trainable import base_meta
from posttrain.trainable import check_resume
from posttrain.trainable import pretrain_workdir
from posttrain.trainable import start_model


def _each_part(fn):
  """A stateless optax transformation applying fn(part name, updates of that part)."""
  def update(updates, state, params=None):
    del params
    return {k: fn(k, u) for k, u in updates.items()}, state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def two_part_optimizer(train_cfg, critic_lr_ratio):
  """Actor and critic as two optimizers: each part's gradient clipped to its own global
  norm, AdamW (moments are per parameter anyway), the critic's step scaled to its
  learning rate. One optax chain over {'actor', 'critic'} rather than multi_transform,
  whose masked states do not map onto per-parameter shardings."""
  if train_cfg.optimizer != 'adamw':
    raise UserError(f'train.optimizer={train_cfg.optimizer}: PPO trains with adamw only; '
                    'drop the flag')
  parts = []
  if train_cfg.grad_clip > 0:
    def clip(_, u):
      norm = optax.global_norm(u)
      factor = jnp.minimum(1.0, train_cfg.grad_clip / (norm + 1e-6))
      return jax.tree.map(lambda g: g * factor, u)
    parts.append(_each_part(clip))
  parts.append(optax.adamw(optimizer.learning_rate_schedule(train_cfg), b1=train_cfg.b1,
                           b2=train_cfg.b2, eps=train_cfg.eps,
                           weight_decay=train_cfg.weight_decay, mask=optimizer.decay_mask))
  parts.append(_each_part(lambda k, u: u if k == 'actor' else jax.tree.map(
      lambda g: g * critic_lr_ratio, u)))
  return optax.chain(*parts)


class PpoStage(Stage):
  name = 'ppo'
  loss_is_nll = False

  def __init__(self, config, workdir, init_from, reward_from):
    self.config, self.workdir, cfg = config, workdir, config.ppo
    if init_from:  # before the policy loads (a missing --init_from is named first)
      restore_reward.check_reward_from(reward_from)
    self.init, self.mesh, self.spec, sft_params = start_model(config, workdir, init_from, 'ppo')
    self.tokenizer = tok = self.init.tokenizer
    self.reward_spec, reward, rtok, _, _, reward_meta = restore_reward.load_reward_model(
        reward_from, config, mesh=self.mesh)
    if rtok.fingerprint != tok.fingerprint:
      raise UserError('--reward_from was trained with another tokenizer than --init_from; '
                      'give a reward model trained from the same tokenizer')
    self.max_prompt_len = config.data.seq_len - cfg.max_new_tokens
    if self.max_prompt_len < 4:
      raise UserError(f'ppo.max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in '
                      f'data.seq_len={config.data.seq_len}; lower it or raise data.seq_len')
    self.eot = tok.chat_ids[chat_template.END_OF_TURN]
    # Actor (full or LoRA on the SFT model) and its reference (the SFT model, frozen).
    self.actor = Trainable(cfg.method, self.spec, sft_params, config.sft, keep_reference=True)
    critic_spec = self.reward_spec if cfg.critic_init == 'reward' else self.spec
    self.critic_spec = critic_spec
    critic_start = {'lm': jax.tree.map(jnp.copy, reward['lm'] if cfg.critic_init == 'reward'
                                       else sft_params),
                    'head': jax.tree.map(jnp.copy, reward['head']) if cfg.critic_init == 'reward'
                    else jax.device_put(scalar_head.init(critic_spec.cfg.d_model),
                                        scalar_head.shardings(self.mesh))}
    self.param_shardings = {'actor': self.actor.param_shardings,
                            'critic': {'lm': critic_spec.param_shardings,
                                       'head': scalar_head.shardings(self.mesh)}}
    d = critic_spec.cfg.d_model
    self.init_params = lambda key: {'actor': self.actor.init_params(key),
                                    'critic': {'lm': critic_spec.init_params(key),
                                               'head': scalar_head.init(d)}}
    actor_start = self.actor.start
    if actor_start is None:  # LoRA: adapters from the seed, B = 0
      actor_start = jax.jit(self.actor.init_params, out_shardings=self.actor.param_shardings)(
          jax.random.key(config.seed))
    self._start = {'actor': actor_start, 'critic': critic_start}
    self.frozen = {'reference': self.actor.frozen, 'reward': reward}
    self.frozen_shardings = {'reference': self.actor.frozen_shardings,
                             'reward': {'lm': self.reward_spec.param_shardings,
                                        'head': scalar_head.shardings(self.mesh)}}
    self.extra = {'rng': np.asarray(jax.random.key_data(jax.random.key(config.seed + 1))),
                  'kl_coef': np.float32(cfg.kl_coef)}
    updates = config.train.steps * cfg.epochs * cfg.minibatches
    actor_train = config.train.copy_and_resolve_references()
    actor_train.steps = updates
    self.tx = two_part_optimizer(actor_train, cfg.critic_learning_rate / config.train.learning_rate
                                 if cfg.critic_learning_rate else 1.0)
    self.schedule = optimizer.learning_rate_schedule(actor_train)
    examples, self.prompt_stats = prompts_lib.tokenize_prompts(
        prompts_lib.read_prompts(tuple(config.data.train_files)), tok, self.max_prompt_len)
    self.num_prompts = len(examples)
    row_block, num_blocks = process_row_block(self.mesh, config.train.batch_size)
    self.data_iter = prompts_lib.train_dataset(config, examples, row_block, num_blocks)
    self.meta = dict(checkpointing.metadata(config, tok, self.mesh), stage='ppo',
                     method=cfg.method, base=base_meta(self.init), **self.actor.meta,
                     params_part='actor',  # what eval, generate and export load
                     reward={'directory': paths.resolve(reward_from, '--reward_from')},
                     pretrain_workdir=pretrain_workdir(self.init))
    self.tokens_per_step = config.train.batch_size * config.data.seq_len
    # Per iteration and token: rollout ~2N (sampling), scoring 4 forwards, training
    # epochs × (actor + critic) forward+backward: counted as a forward of 2N each.
    self.flops_per_token = flops.train_flops_per_token(config.model, config.data.seq_len) / 3 * (
        1 + 4 + 6 * cfg.epochs)

  def start_params(self):
    return self._start

  def check_compatible(self, meta):
    check_resume(meta, self.config, self.tokenizer, self.meta, 'ppo.method')

  # --- the three jitted phases ---------------------------------------------------------------

  def _actor_model(self, params, frozen):
    return self.actor.model_params(params['actor'], frozen['reference'])

  def _rollout(self, params, frozen, prompt, length, key):
    cfg = self.config.ppo
    model = nnx.merge(self.spec.graphdef, self._actor_model(params, frozen))
    return decode.generate(model, prompt, length, key, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_k=0, top_p=cfg.top_p,
                           eos_id=self.eot)

  def _values(self, critic, seq, positions, segment_ids):
    hidden = self.critic_spec.hidden_states(critic['lm'], seq, positions, segment_ids)
    values = jnp.einsum('btd,d->bt', hidden.astype(jnp.float32),
                        critic['head']['w'].astype(jnp.float32)) + critic['head']['b']
    return values[:, :-1]  # V(state before each target token)

  def _score(self, state, frozen, prompt, length, tokens, counts, lang_ok):
    cfg, params = self.config.ppo, state['params']
    length, counts = length[:, 0], counts
    seq, segment_ids, mask = build_sequences(prompt, length, tokens, counts)
    positions = jnp.broadcast_to(jnp.arange(seq.shape[1], dtype=jnp.int32), seq.shape)
    inputs, targets = seq, seq[:, 1:]
    actor_logits = self.spec.apply(self._actor_model(params, frozen), inputs, positions,
                                   segment_ids)[:, :-1]
    logp = token_logps(actor_logits, targets, cfg.temperature)
    ref_logp = token_logps(self.spec.apply(frozen['reference'], inputs, positions,
                                           segment_ids)[:, :-1], targets, cfg.temperature)
    values = self._values(params['critic'], inputs, positions, segment_ids)
    hidden = self.reward_spec.hidden_states(frozen['reward']['lm'], inputs, positions,
                                            segment_ids)
    scores = scalar_head.scores(frozen['reward']['head'], hidden, segment_ids)[:, 0]
    response_mask = (jnp.arange(tokens.shape[1])[None] < counts[:, None])
    ended = jnp.take_along_axis(tokens, jnp.maximum(counts - 1, 0)[:, None], axis=1)[:, 0] == self.eot
    repeated = ppo_loss.repeated_ngram(tokens, response_mask)
    raw_scores = scores
    scores = (scores - cfg.missing_eot_penalty * (~ended) - cfg.repeat_penalty * repeated
              - cfg.wrong_language_penalty * (1.0 - lang_ok))
    kl = ppo_loss.kl_estimate(logp, ref_logp, cfg.kl_estimator) * mask
    last_index = length + counts - 2
    rewards, non_score = ppo_loss.token_rewards(scores, kl, mask, state['extra']['kl_coef'],
                                                last_index)
    if cfg.whiten_rewards:
      rewards = ppo_loss.masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = ppo_loss.gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = ppo_loss.masked_whiten(advantages, mask)
    batch = {'seq': seq, 'segment_ids': segment_ids, 'mask': mask, 'old_logp': logp,
             'old_values': values, 'advantages': advantages, 'returns': returns}
    kl_per_seq = jnp.sum(kl, axis=1)
    score_mean, non_score_mean = jnp.mean(scores), jnp.mean(jnp.sum(non_score, axis=1))
    metrics = {'objective/scores': score_mean, 'objective/reward_model_score':
               jnp.mean(raw_scores), 'objective/kl': jnp.mean(kl_per_seq),
               'objective/entropy': ppo_loss.entropy(actor_logits / cfg.temperature, mask),
               'objective/non_score_reward': non_score_mean,
               # the sum of the two means (not a third reduction): exactly the score at KL 0
               'objective/rlhf_reward': score_mean + non_score_mean,
               'response_length': jnp.mean(counts.astype(jnp.float32)),
               'end_of_turn_rate': jnp.mean(ended.astype(jnp.float32)),
               'repeat_4gram_rate': jnp.mean(repeated.astype(jnp.float32))}
    return batch, metrics

  def _minibatch_loss(self, params, frozen, mb):
    cfg = self.config.ppo
    positions = jnp.broadcast_to(jnp.arange(mb['seq'].shape[1], dtype=jnp.int32),
                                 mb['seq'].shape)
    logits = self.spec.apply(self._actor_model(params, frozen), mb['seq'], positions,
                             mb['segment_ids'])[:, :-1]
    logp = token_logps(logits, mb['seq'][:, 1:], cfg.temperature)
    pg, clipfrac, approxkl, ratio = ppo_loss.policy_loss(logp, mb['old_logp'],
                                                         mb['advantages'], mb['mask'], cfg.clip)
    values = self._values(params['critic'], mb['seq'], positions, mb['segment_ids'])
    vf, vf_clipfrac = ppo_loss.value_loss(values, mb['old_values'], mb['returns'], mb['mask'],
                                          cfg.value_clip)
    ent = (ppo_loss.entropy(logits / cfg.temperature, mb['mask']) if cfg.entropy_coef
           else jnp.zeros(()))
    loss = pg + cfg.vf_coef * vf - cfg.entropy_coef * ent
    return loss, {'loss/policy_avg': pg, 'loss/value_avg': vf, 'policy/clipfrac_avg': clipfrac,
                  'policy/approxkl_avg': approxkl, 'val/clipfrac_avg': vf_clipfrac,
                  'val/ratio': ratio, 'loss': loss}

  def _train(self, state, frozen, batch, key):
    cfg = self.config.ppo
    b = batch['seq'].shape[0]
    size = b // cfg.minibatches
    orders = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), b)
                        for e in range(cfg.epochs)]).reshape(-1, size)
    grad_fn = jax.value_and_grad(self._minibatch_loss, has_aux=True)

    def update(carry, index):
      params, opt_state = carry
      mb = jax.tree.map(lambda x: jnp.take(x, index, axis=0), batch)
      (_, aux), grads = grad_fn(params, frozen, mb)
      updates, opt_state = self.tx.update(grads, opt_state, params)
      aux['grad_norm'] = optax.global_norm(grads)
      return (optax.apply_updates(params, updates), opt_state), aux

    (params, opt_state), aux = jax.lax.scan(update, (state['params'], state['opt_state']),
                                            orders)
    return params, opt_state, jax.tree.map(jnp.mean, aux)

  def make_step_fn(self, shardings):
    mesh, cfg = self.mesh, self.config.ppo
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rollout = with_mesh(mesh, jax.jit(self._rollout, out_shardings=(replicated, replicated)))
    score = with_mesh(mesh, jax.jit(self._score))
    train = with_mesh(mesh, jax.jit(self._train, donate_argnums=0))
    lang_check = cfg.wrong_language_penalty != 0

    def step(state, frozen, batch):
      t0 = time.perf_counter()
      keys = jax.random.split(jax.random.wrap_key_data(state['extra']['rng']), 3)
      prompt = batch['prompt']
      tokens, counts = rollout(state['params'], frozen, prompt, batch['length'][:, 0], keys[0])
      tokens.block_until_ready()
      t1 = time.perf_counter()
      lang_ok = self._language_ok(tokens, counts, batch['lang']) if lang_check else None
      if lang_ok is None:
        lang_ok = jnp.ones(tokens.shape[0], jnp.float32)
      rollout_batch, metrics = score(state, frozen, prompt, batch['length'], tokens, counts,
                                     lang_ok)
      jax.block_until_ready(rollout_batch)
      t2 = time.perf_counter()
      # Read before `train`, which donates the state (its buffers may be reused).
      step_before, kl_coef = state['step'].copy(), state['extra']['kl_coef'].copy()
      params, opt_state, aux = train(state, frozen, rollout_batch, keys[1])
      if cfg.adaptive_kl:
        kl_coef = ppo_loss.adaptive_kl(kl_coef, metrics['objective/kl'], cfg.target_kl,
                                       cfg.kl_horizon, tokens.shape[0])
      new_state = {'step': step_before + 1, 'params': params, 'opt_state': opt_state,
                   'extra': {'rng': jax.random.key_data(keys[2]),
                             'kl_coef': jnp.asarray(kl_coef, jnp.float32)}}
      new_state = jax.device_put(new_state, shardings)
      jax.block_until_ready(new_state)
      t3 = time.perf_counter()
      metrics = dict(metrics, **aux, kl_coef=kl_coef,
                     lr=self.schedule(step_before * cfg.epochs * cfg.minibatches))
      metrics.update({'time/rollout_s': t1 - t0, 'time/scoring_s': t2 - t1,
                      'time/training_s': t3 - t2})
      return new_state, metrics
    return step

  def _language_ok(self, tokens, counts, lang):
    """1 where the answer is in the prompt's language (unknown languages always pass)."""
    tokens, counts = np.asarray(jax.device_get(tokens)), np.asarray(jax.device_get(counts))
    if jax.process_count() > 1:  # rows are spread over processes; the check needs all
      from jax.experimental import multihost_utils
      lang = multihost_utils.process_allgather(lang, tiled=True)
    langs = np.asarray(jax.device_get(lang))[:, 0]
    ok = []
    for row, want in zip(range(len(tokens)), langs):
      ids = [int(t) for t in tokens[row, :counts[row]] if t != self.eot]
      got = chat_metrics.language_of(self.tokenizer.decode(ids))
      ok.append(1.0 if want < 0 or got == prompts_lib.LANGS[want] else 0.0)
    return jnp.asarray(ok, jnp.float32)
