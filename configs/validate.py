"""Checks the resolved config once, before any work, so mistakes cost nothing."""
import math

from configs.errors import UserError

CHOICES = {
    'data.text_format': ('auto', 'text', 'jsonl'),
    'data.text_split': ('blank_line', 'file'),
    'tokenizer.model_type': ('bpe', 'unigram'),
    'tokenizer.normalization': ('identity', 'nfkc'),
    'model.dtype': ('auto', 'float32', 'bfloat16', 'float16'),
    'model.param_dtype': ('float32', 'bfloat16'),
    'train.optimizer': ('adamw', 'muon'),
    'train.muon_preconditioning': ('frobenius', 'aol'),
    'model.attention': ('auto', 'blocked', 'cudnn', 'splash', 'xla', 'reference'),
    'model.remat': ('none', 'full', 'dots'),
    'data.chat_format': ('auto', 'messages', 'prompt_completion', 'alpaca'),
    'sft.method': ('full', 'lora', 'prompt'),
    'sft.truncation': ('truncate', 'drop'),
    'reward.method': ('full', 'lora'),
    'dpo.method': ('full', 'lora'),
    'dpo.loss_type': ('sigmoid', 'ipo'),
    'ppo.method': ('full', 'lora'),
    'ppo.critic_init': ('reward', 'sft'),
    'ppo.kl_estimator': ('k1', 'k3'),
    'grpo.method': ('full', 'lora'),
    'grpo.reward_aggregation': ('sum_then_normalize', 'normalize_then_sum'),
    'grpo.scale_rewards': ('group', 'batch', 'none'),
    'grpo.loss_type': ('grpo', 'dr_grpo', 'dapo', 'bnpo'),
}
# The domain of every numeric key of configs/base.py, in this one place, checked before any
# work: '>= 1', '> 0', or an interval '[0, 1]', '(0, 1]', '[0, 0.5)'. A value that is not
# finite (nan, inf) is outside every domain. The post-training stages' `pipeline.<stage>.*`
# keys are checked as the train.*/checkpoint.*/data.* keys they become (configs/stages.py).
DOMAINS = {
    'seed': '>= 0',
    'data.seq_len': '>= 2',
    'data.prepare_workers': '>= 0',
    'data.prepare_shard_mb': '> 0',
    'data.num_shards': '>= 0',
    'data.num_threads': '>= 0',
    'data.prefetch': '>= 0',
    'tokenizer.vocab_size': '>= 1',  # and MIN_VOCAB_SIZE, below
    'tokenizer.character_coverage': '[0, 1]',
    'tokenizer.max_sentences': '>= 1',
    'model.num_layers': '>= 1',
    'model.d_model': '>= 1',
    'model.num_heads': '>= 1',
    'model.num_kv_heads': '>= 1',
    'model.head_dim': '>= 0',
    'model.mlp_dim': '>= 1',
    'model.vocab_size': '>= 1',
    'model.max_seq_len': '>= 1',
    'model.rope_theta': '> 0',
    'model.norm_eps': '> 0',
    'model.init_std': '> 0',
    'model.attention_block': '>= 1',
    'train.steps': '>= 1',
    'train.stop_after': '>= 0',
    'train.batch_size': '>= 1',
    'train.microbatches': '>= 1',
    'train.learning_rate': '> 0',
    'train.muon_learning_rate': '> 0',
    'train.muon_beta': '[0, 1)',
    'train.muon_ns_steps': '>= 1',
    'train.warmup_steps': '>= 0',
    'train.min_lr_ratio': '[0, 1]',
    'train.weight_decay': '>= 0',
    'train.b1': '[0, 1)',
    'train.b2': '[0, 1)',
    'train.eps': '> 0',
    'train.grad_clip': '>= 0',
    'train.z_loss': '>= 0',
    'train.log_every': '>= 1',
    'train.eval_every': '>= 0',
    'train.eval_batches': '>= 1',
    'train.peak_tflops': '>= 0',
    'checkpoint.save_every_steps': '>= 0',
    'checkpoint.save_every_minutes': '>= 0',
    'checkpoint.keep': '>= 1',
    'checkpoint.keep_period': '>= 0',
    'checkpoint.timeout_s': '> 0',
    'sft.lora_rank': '>= 1',
    'sft.lora_alpha': '> 0',
    'sft.num_virtual_tokens': '>= 1',
    'sft.prompt_reparam_hidden': '>= 0',
    'sft.eval_prompts': '>= 1',
    'sft.max_new_tokens': '>= 1',
    'reward.center_coef': '>= 0',
    'dpo.beta': '> 0',
    'dpo.label_smoothing': '[0, 0.5)',
    'ppo.critic_learning_rate': '>= 0',
    'ppo.max_new_tokens': '>= 1',
    'ppo.temperature': '> 0',
    'ppo.top_p': '(0, 1]',
    'ppo.epochs': '>= 1',
    'ppo.minibatches': '>= 1',
    'ppo.clip': '> 0',
    'ppo.value_clip': '> 0',
    'ppo.vf_coef': '>= 0',
    'ppo.entropy_coef': '>= 0',
    'ppo.gamma': '[0, 1]',
    'ppo.lam': '[0, 1]',
    'ppo.kl_coef': '>= 0',
    'ppo.target_kl': '> 0',
    'ppo.kl_horizon': '>= 1',
    'ppo.missing_eot_penalty': '>= 0',
    'ppo.repeat_penalty': '>= 0',
    'ppo.wrong_language_penalty': '>= 0',
    'grpo.num_generations': '>= 2',
    'grpo.temperature': '> 0',
    'grpo.top_p': '(0, 1]',
    'grpo.max_completion_length': '>= 1',
    'grpo.epsilon': '> 0',
    'grpo.epsilon_high': '>= 0',
    'grpo.beta': '>= 0',
    'grpo.num_iterations': '>= 1',
    'grpo.max_resample_rounds': '>= 0',
    'report.eval_prompts': '>= 1',
    'report.max_new_tokens': '>= 1',
    'report.temperature': '>= 0',
    'report.seed': '>= 0',
    'report.bpb_batches': '>= 0',
    'report.xz_train_mib': '>= 1',
    'hf.parity_tolerance': '> 0',
    'hf.parity_sequences': '>= 1',
    'hf.shard_mb': '> 0',
    'serve.max_batch': '>= 1',
    'serve.min_bucket': '>= 1',
    'serve.max_queue': '>= 1',
    'serve.default_max_tokens': '>= 1',
    'serve.max_n': '>= 1',
}
# Why a domain is what it is, where the bare bound would not say.
NOTES = {
    'data.seq_len': 'a token and its target',
    'ppo.top_p': '1 = off',
    'ppo.temperature': 'sampling',
    'ppo.gamma': 'a discount factor',
    'ppo.lam': 'the GAE lambda',
    'ppo.clip': 'the policy ratio clip; a smaller one moves the policy less',
    'ppo.value_clip': 'the value clip around the rollout\'s values',
    'train.b1': 'an Adam moment decay',
    'train.b2': 'an Adam moment decay',
    'train.grad_clip': '0 = off',
    'checkpoint.save_every_steps': '0 = off',
    'report.temperature': '0 = greedy',
    'ppo.missing_eot_penalty': 'subtracted from the score; 0 = off',
    'ppo.repeat_penalty': 'subtracted from the score; 0 = off',
    'ppo.wrong_language_penalty': 'subtracted from the score; 0 = off',
    'grpo.num_generations': 'GRPO compares answers within a group of at least two',
    'grpo.top_p': '1 = off',
    'grpo.epsilon_high': '0 = grpo.epsilon',
    'grpo.beta': '0 = no reference',
}
# Pad, unk, BOS, EOS, 4 chat roles, 256 byte pieces, plus room for real merges.
MIN_VOCAB_SIZE = 8 + 256 + 64


def _get(config, dotted):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def _require(condition, message):
  if not condition:
    raise UserError(message)


def in_domain(value, domain):
  """Whether the number `value` lies in `domain` (a DOMAINS string); nan and inf never do."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return False
  if domain.startswith(('>=', '>')):
    bound = float(domain.lstrip('>= '))
    return value >= bound if domain.startswith('>=') else value > bound
  low, high = (float(x) for x in domain[1:-1].split(','))
  return ((value >= low if domain[0] == '[' else value > low)
          and (value <= high if domain[-1] == ']' else value < high))


def check_domains(config):
  """One line naming the first key whose value is outside its domain."""
  for key, domain in DOMAINS.items():
    try:
      value = _get(config, key)
    except (KeyError, AttributeError):  # a config from before the key existed
      continue
    if not in_domain(value, domain):
      where = domain if domain.startswith('>') else f'in {domain}'
      note = f' ({NOTES[key]})' if key in NOTES else ''
      error = UserError(f'{key}={value} must be {where}{note}')
      error.key = key  # the pipeline names its own key for a stage's train.*, data.* ...
      raise error


def validate(config):
  """Raises UserError naming the first impossible setting and its fix."""
  for key, allowed in CHOICES.items():
    value = _get(config, key)
    _require(value in allowed, f'config {key}={value!r} is not one of {allowed}; pick one of them')
  data, tok, model, train, mesh = (config.data, config.tokenizer, config.model,
                                   config.train, config.mesh)
  _require(not in_domain(tok.vocab_size, '>= 1') or tok.vocab_size >= MIN_VOCAB_SIZE,
           f'tokenizer.vocab_size={tok.vocab_size} is too small; use at least {MIN_VOCAB_SIZE} '
           '(8 special tokens + 256 byte pieces + merges)')
  check_domains(config)
  _require(data.seq_len <= model.max_seq_len,
           f'data.seq_len={data.seq_len} exceeds model.max_seq_len={model.max_seq_len}; '
           'lower data.seq_len or raise model.max_seq_len')
  _require(model.vocab_size == tok.vocab_size,
           f'model.vocab_size={model.vocab_size} differs from tokenizer.vocab_size='
           f'{tok.vocab_size}; set both to the same value')
  _require(model.num_heads % model.num_kv_heads == 0,
           f'model.num_heads={model.num_heads} is not divisible by model.num_kv_heads='
           f'{model.num_kv_heads}; choose num_kv_heads that divides num_heads')
  if model.head_dim == 0:
    _require(model.d_model % model.num_heads == 0,
             f'model.d_model={model.d_model} is not divisible by model.num_heads='
             f'{model.num_heads}; change one or set model.head_dim')
  _require(train.batch_size % train.microbatches == 0,
           f'train.batch_size={train.batch_size} is not divisible by train.microbatches='
           f'{train.microbatches}')
  for axis in ('data', 'fsdp', 'tensor'):
    _require(isinstance(mesh[axis], int) and (mesh[axis] == -1 or mesh[axis] >= 1),
             f'mesh.{axis}={mesh[axis]} must be a positive size or -1 (fill)')
  _require([mesh.data, mesh.fsdp, mesh.tensor].count(-1) <= 1,
           'at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1')
  if config.sft.method == 'prompt':
    _require(config.sft.num_virtual_tokens < data.seq_len - 1,
             f'sft.num_virtual_tokens={config.sft.num_virtual_tokens} leaves no room in '
             f'data.seq_len={data.seq_len}; use fewer virtual tokens or a longer seq_len')
  ppo = config.ppo
  _require(train.batch_size % ppo.minibatches == 0,
           f'ppo.minibatches={ppo.minibatches} must divide train.batch_size={train.batch_size}')
