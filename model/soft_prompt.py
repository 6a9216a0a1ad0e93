"""Prompt tuning and P-tuning: N learned virtual-token embeddings before every example.

`prompt` (N, d_model) starts as the embeddings of N random vocabulary tokens
(real-word initialisation trains faster than noise). With `reparam_hidden > 0`
(P-tuning) the virtual tokens are prompt + MLP(prompt), the MLP's output layer
zero at step 0; the MLP couples the tokens during training, then only the
resulting (N, d_model) embeddings are needed.
"""
import jax
import jax.numpy as jnp


def init(key, embed_table, num_virtual, reparam_hidden):
  token_key, mlp_key = jax.random.split(key)
  ids = jax.random.randint(token_key, (num_virtual,), 4, embed_table.shape[0])
  tree = {'prompt': jnp.take(embed_table, ids, axis=0)}
  if reparam_hidden:
    d = embed_table.shape[1]
    tree['mlp'] = {'w_in': jax.random.normal(mlp_key, (d, reparam_hidden), embed_table.dtype)
                   * d ** -0.5,
                   'b_in': jnp.zeros((reparam_hidden,), embed_table.dtype),
                   'w_out': jnp.zeros((reparam_hidden, d), embed_table.dtype)}
  return tree


def axes(tree):
  spec = {'prompt': (None, 'embed')}
  if 'mlp' in tree:
    spec['mlp'] = {'w_in': ('embed', None), 'b_in': (None,), 'w_out': (None, 'embed')}
  return spec


def embeddings(tree):
  """The (N, d_model) virtual-token embeddings the model reads."""
  prompt = tree['prompt']
  if 'mlp' not in tree:
    return prompt
  mlp = tree['mlp']
  hidden = jax.nn.gelu(prompt @ mlp['w_in'] + mlp['b_in'])
  return prompt + hidden @ mlp['w_out']
