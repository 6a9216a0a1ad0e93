"""Our params ↔ Hugging Face LLaMA tensors, and the two configs.

Both sides use the half-split RoPE layout (HF's `rotate_half`), so q/k weights
need no permutation: every mapping is a reshape and/or a transpose, exact in
both directions (import → export reproduces the original bits).
"""
import numpy as np

from configs.errors import UserError

SUPPORTED_ARCHITECTURES = ('LlamaForCausalLM',)


def _dims(cfg):
  return cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim or cfg.d_model // cfg.num_heads


def tensor_map(cfg):
  """[(hf name, our path, ours→hf, hf→ours)] for every tensor of the model."""
  d, h, k, hd = _dims(cfg)
  ident = (lambda w: w, lambda w: w)
  transpose = (lambda w: w.T, lambda w: w.T)
  rows = [('model.embed_tokens.weight', ('embed',), *ident),
          ('model.norm.weight', ('final_norm', 'scale'), *ident)]
  if not cfg.tie_embeddings:
    rows.append(('lm_head.weight', ('lm_head',), *transpose))
  for i in range(cfg.num_layers):
    hf, ours = f'model.layers.{i}.', f'block_{i}'
    rows += [
        (hf + 'input_layernorm.weight', (ours, 'attn_norm', 'scale'), *ident),
        (hf + 'post_attention_layernorm.weight', (ours, 'mlp_norm', 'scale'), *ident),
        (hf + 'self_attn.q_proj.weight', (ours, 'attn', 'wq'),
         lambda w: w.reshape(d, h * hd).T, lambda w: w.T.reshape(d, h, hd)),
        (hf + 'self_attn.k_proj.weight', (ours, 'attn', 'wk'),
         lambda w: w.reshape(d, k * hd).T, lambda w: w.T.reshape(d, k, hd)),
        (hf + 'self_attn.v_proj.weight', (ours, 'attn', 'wv'),
         lambda w: w.reshape(d, k * hd).T, lambda w: w.T.reshape(d, k, hd)),
        (hf + 'self_attn.o_proj.weight', (ours, 'attn', 'wo'),
         lambda w: w.reshape(h * hd, d).T, lambda w: w.T.reshape(h, hd, d)),
        (hf + 'mlp.gate_proj.weight', (ours, 'mlp', 'w_gate'), *transpose),
        (hf + 'mlp.up_proj.weight', (ours, 'mlp', 'w_up'), *transpose),
        (hf + 'mlp.down_proj.weight', (ours, 'mlp', 'w_down'), *transpose),
    ]
  return rows


def hf_config(cfg, tokenizer=None):
  d, h, k, hd = _dims(cfg)
  return {
      'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
      'vocab_size': cfg.vocab_size, 'hidden_size': d, 'intermediate_size': cfg.mlp_dim,
      'num_hidden_layers': cfg.num_layers, 'num_attention_heads': h,
      'num_key_value_heads': k, 'head_dim': hd, 'hidden_act': 'silu',
      'max_position_embeddings': cfg.max_seq_len, 'rms_norm_eps': cfg.norm_eps,
      'rope_theta': cfg.rope_theta,
      'rope_parameters': {'rope_type': 'default', 'rope_theta': cfg.rope_theta},
      'tie_word_embeddings': bool(cfg.tie_embeddings), 'attention_bias': False,
      'mlp_bias': False, 'initializer_range': cfg.init_std, 'dtype': 'float32',
      'bos_token_id': tokenizer.bos_id if tokenizer else 2,
      'eos_token_id': tokenizer.eos_id if tokenizer else 3,
      'pad_token_id': tokenizer.pad_id if tokenizer else 0,
  }


def model_fields_from_hf(hf):
  """Our model.* fields from a HF config.json dict (LLaMA only)."""
  arch = (hf.get('architectures') or ['?'])[0]
  if arch not in SUPPORTED_ARCHITECTURES or hf.get('model_type') != 'llama':
    raise UserError(f'unsupported architecture {arch} (model_type {hf.get("model_type")}); '
                    f'supported: {", ".join(SUPPORTED_ARCHITECTURES)}')
  rope = hf.get('rope_parameters') or hf.get('rope_scaling') or {}
  kind = rope.get('rope_type', rope.get('type', 'default'))
  if kind != 'default':
    raise UserError(f'RoPE scaling {kind!r} is not supported; only plain RoPE')
  if hf.get('attention_bias') or hf.get('mlp_bias'):
    raise UserError('checkpoints with attention/MLP biases are not supported')
  heads = hf['num_attention_heads']
  return {
      'vocab_size': hf['vocab_size'], 'd_model': hf['hidden_size'],
      'mlp_dim': hf['intermediate_size'], 'num_layers': hf['num_hidden_layers'],
      'num_heads': heads, 'num_kv_heads': hf.get('num_key_value_heads') or heads,
      'head_dim': hf.get('head_dim') or hf['hidden_size'] // heads,
      'max_seq_len': hf.get('max_position_embeddings', 2048),
      'norm_eps': hf.get('rms_norm_eps', 1e-6),
      'rope_theta': float(rope.get('rope_theta', hf.get('rope_theta', 10000.0))),
      'tie_embeddings': bool(hf.get('tie_word_embeddings', False)),
  }


def get_path(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def check_shape(name, array, expected):
  if tuple(array.shape) != tuple(expected):
    raise UserError(f'tensor {name} has shape {tuple(array.shape)} but config.json implies '
                    f'{tuple(expected)}; the checkpoint and its config.json disagree')
  return np.asarray(array)
