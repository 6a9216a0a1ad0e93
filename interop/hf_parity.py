"""Runs our model and Hugging Face's on the same tokens: max |Δlogit| and KL."""
import jax
import numpy as np
from flax import nnx

from configs.errors import UserError
from model import transformer

INSTALL_HINT = ('install them with `.venv/bin/pip install -r requirements-hf.txt`, or pass '
                '--noparity to skip the check')


def import_hf():
  try:
    import torch
    import transformers
  except ImportError:
    raise UserError(f'the parity check needs torch and transformers; {INSTALL_HINT}') from None
  return torch, transformers


def our_logits(model_cfg, params, tokens):
  cfg = model_cfg.copy_and_resolve_references()
  cfg.dtype = 'float32'
  graphdef = nnx.split(transformer.abstract_model(cfg))[0]
  model = nnx.merge(graphdef, jax.tree.map(np.asarray, params))
  b, t = tokens.shape
  positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
  return np.asarray(model(tokens, positions, np.ones((b, t), np.int32)), np.float64)


def hf_logits(hf_dir, tokens):
  torch, transformers = import_hf()
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  model.eval()
  with torch.no_grad():
    return model(torch.tensor(tokens, dtype=torch.long)).logits.double().numpy()


def compare(model_cfg, params, hf_dir, num_sequences=4, seq_len=64, seed=0):
  seq_len = min(seq_len, model_cfg.max_seq_len)
  tokens = np.random.default_rng(seed).integers(
      0, model_cfg.vocab_size, (num_sequences, seq_len)).astype(np.int32)
  ours, theirs = our_logits(model_cfg, params, tokens), hf_logits(hf_dir, tokens)
  log_p = ours - np.logaddexp.reduce(ours, axis=-1, keepdims=True)
  log_q = theirs - np.logaddexp.reduce(theirs, axis=-1, keepdims=True)
  kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))
  return {'max_abs_logit_diff': float(np.abs(ours - theirs).max()), 'kl': kl,
          'sequences': num_sequences, 'seq_len': seq_len}


def check(result, tolerance):
  print(f'parity: max |logit diff| {result["max_abs_logit_diff"]:.3e}, KL {result["kl"]:.3e} '
        f'over {result["sequences"]}×{result["seq_len"]} random tokens', flush=True)
  if not result['max_abs_logit_diff'] <= tolerance:
    raise UserError(f'parity check failed: max |logit diff| {result["max_abs_logit_diff"]:.3e} '
                    f'> hf.parity_tolerance={tolerance}; the conversion is wrong for this model')
