"""Checks the resolved config once, before any work, so mistakes cost nothing."""
from configs.errors import UserError

CHOICES = {
    'data.text_format': ('auto', 'text', 'jsonl'),
    'data.text_split': ('blank_line', 'file'),
    'tokenizer.model_type': ('bpe', 'unigram'),
    'tokenizer.normalization': ('identity', 'nfkc'),
    'model.dtype': ('auto', 'float32', 'bfloat16', 'float16'),
    'model.param_dtype': ('float32', 'bfloat16'),
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


def validate(config):
  """Raises UserError naming the first impossible setting and its fix."""
  for key, allowed in CHOICES.items():
    value = _get(config, key)
    _require(value in allowed, f'config {key}={value!r} is not one of {allowed}; pick one of them')
  data, tok, model, train, mesh = (config.data, config.tokenizer, config.model,
                                   config.train, config.mesh)
  _require(data.seq_len >= 2, f'data.seq_len={data.seq_len} must be >= 2 (a token and its target)')
  _require(data.seq_len <= model.max_seq_len,
           f'data.seq_len={data.seq_len} exceeds model.max_seq_len={model.max_seq_len}; '
           'lower data.seq_len or raise model.max_seq_len')
  _require(tok.vocab_size >= MIN_VOCAB_SIZE,
           f'tokenizer.vocab_size={tok.vocab_size} is too small; use at least {MIN_VOCAB_SIZE} '
           '(8 special tokens + 256 byte pieces + merges)')
  _require(model.vocab_size == tok.vocab_size,
           f'model.vocab_size={model.vocab_size} differs from tokenizer.vocab_size='
           f'{tok.vocab_size}; set both to the same value')
  for key in ('num_layers', 'd_model', 'num_heads', 'num_kv_heads', 'mlp_dim', 'max_seq_len'):
    _require(model[key] >= 1, f'model.{key}={model[key]} must be positive')
  _require(model.num_heads % model.num_kv_heads == 0,
           f'model.num_heads={model.num_heads} is not divisible by model.num_kv_heads='
           f'{model.num_kv_heads}; choose num_kv_heads that divides num_heads')
  if model.head_dim == 0:
    _require(model.d_model % model.num_heads == 0,
             f'model.d_model={model.d_model} is not divisible by model.num_heads='
             f'{model.num_heads}; change one or set model.head_dim')
  _require(train.steps >= 1, f'train.steps={train.steps} must be >= 1')
  _require(train.batch_size >= 1, f'train.batch_size={train.batch_size} must be >= 1')
  _require(train.microbatches >= 1 and train.batch_size % train.microbatches == 0,
           f'train.batch_size={train.batch_size} is not divisible by train.microbatches='
           f'{train.microbatches}')
  _require(train.learning_rate > 0, f'train.learning_rate={train.learning_rate} must be > 0')
  _require(train.log_every >= 1, f'train.log_every={train.log_every} must be >= 1')
  for axis in ('data', 'fsdp', 'tensor'):
    _require(mesh[axis] == -1 or mesh[axis] >= 1,
             f'mesh.{axis}={mesh[axis]} must be a positive size or -1 (fill)')
  _require([mesh.data, mesh.fsdp, mesh.tensor].count(-1) <= 1,
           'at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1')
  _require(config.sft.lora_rank >= 1, f'sft.lora_rank={config.sft.lora_rank} must be >= 1')
  _require(config.sft.num_virtual_tokens >= 1,
           f'sft.num_virtual_tokens={config.sft.num_virtual_tokens} must be >= 1')
  if config.sft.method == 'prompt':
    _require(config.sft.num_virtual_tokens < data.seq_len - 1,
             f'sft.num_virtual_tokens={config.sft.num_virtual_tokens} leaves no room in '
             f'data.seq_len={data.seq_len}; use fewer virtual tokens or a longer seq_len')
  _require(config.dpo.beta > 0, f'dpo.beta={config.dpo.beta} must be > 0')
  _require(0 <= config.dpo.label_smoothing < 0.5,
           f'dpo.label_smoothing={config.dpo.label_smoothing} must be in [0, 0.5)')
  ppo = config.ppo
  _require(ppo.max_new_tokens >= 1, f'ppo.max_new_tokens={ppo.max_new_tokens} must be >= 1')
  _require(ppo.epochs >= 1 and ppo.minibatches >= 1 and train.batch_size % ppo.minibatches == 0,
           f'ppo.minibatches={ppo.minibatches} must divide train.batch_size={train.batch_size} '
           f'(and ppo.epochs={ppo.epochs} be >= 1)')
  _require(ppo.temperature > 0, f'ppo.temperature={ppo.temperature} must be > 0 (sampling)')
  _require(config.checkpoint.keep >= 1, f'checkpoint.keep={config.checkpoint.keep} must be >= 1')
