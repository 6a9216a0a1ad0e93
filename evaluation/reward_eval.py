"""`run.py eval` on reward and DPO workdirs: preference accuracy, and scores of any
prompt/response JSONL under a reward model (to see what it rewards: reward models
are known to reward surface features that a policy then learns to exploit)."""

import jax
import ml_collections
import numpy as np

from configs.errors import UserError
from data_pipeline import chat_template
from data_pipeline import jsonl
from data_pipeline import preference
from data_pipeline import preference_embedded
from data_pipeline import tokenizer as tokenizer_lib
from engine import mesh as mesh_lib
from engine import restore_params
from engine import restore_reward
from engine import train_state
from engine.train_step import with_mesh
from evaluation import pair_scores


def _spec_and_meta(workdir, config, checkpoint, step):
  directory, step = restore_params.locate(workdir, checkpoint, step)
  meta = restore_params.read_meta(directory, step)
  saved = ml_collections.ConfigDict(meta['config'])
  tokenizer = tokenizer_lib.load_tokenizer(
      tokenizer_lib.tokenizer_path(workdir, config.tokenizer), saved.model.vocab_size)
  spec = train_state.ModelSpec(saved.model, mesh_lib.make_mesh(config.mesh))
  return directory, step, meta, saved, tokenizer, spec


def eval_pairs(eval_files, tokenizer, seq_len):
  pairs = (preference.read_pairs(eval_files) if eval_files
           else preference_embedded.validation_pairs())
  examples, stats = preference.tokenize_pairs(pairs, tokenizer, seq_len)
  preference.check_not_empty(examples, stats, 'the held-out pairs')
  return examples, stats


def run_reward_eval(config, workdir, *, checkpoint=None, step=None, eval_files=(),
                    batch_size=8, score_file=None):
  from posttrain import reward
  scored = read_scored(score_file) if score_file else None  # its mistakes cost no loading
  spec, params, tokenizer, saved, step, meta = restore_reward.load_reward_model(
      workdir, config, checkpoint, step)
  score_fn = with_mesh(spec.mesh, jax.jit(reward.pair_scores_fn(spec, lambda lm, _: lm),
                                          out_shardings=pair_scores.replicated_out(spec.mesh)))
  rows = batch_size * spec.mesh.shape['data'] * spec.mesh.shape['fsdp']
  examples, stats = eval_pairs(eval_files, tokenizer, saved.data.seq_len)
  scores, kinds = pair_scores.score_pairs(score_fn, params, {}, examples, rows, spec.mesh)
  summary = {'stage': 'reward', 'step': step, **pair_scores.accuracy(scores, kinds,
                                                                    stats['kinds']),
             'reward_mean': float(scores.mean()), 'reward_std': float(scores.std())}
  if scored:
    summary['scores'] = score_responses(score_fn, params, spec, tokenizer, scored,
                                        saved.data.seq_len, rows)
  return summary


def _scored_examples(tokenizer, conversations, seq_len):
  """Rows for (prompt messages, response messages) pairs, each scored as the "chosen" of
  a pair whose "rejected" is empty padding."""
  examples = []
  for prompt, response in conversations:
    ids, mask, _ = preference.response_ids(tokenizer, prompt, response)
    row = preference.make_row(ids, mask, seq_len)
    examples.append({k: np.stack([v, np.zeros_like(v)]) for k, v in row.items()}
                    | {'kind': np.zeros(2, np.int32), 'margin': np.zeros(2, np.float32)})
  return examples


def reward_model_scores(reward_workdir, config, conversations, batch_size=8):
  """Scores of (prompt messages, response messages) under a reward workdir's model:
  what `eval` of a PPO workdir reports for its greedy answers."""
  from posttrain import reward
  spec, params, tokenizer, saved, _, _ = restore_reward.load_reward_model(reward_workdir,
                                                                          config)
  score_fn = with_mesh(spec.mesh, jax.jit(reward.pair_scores_fn(spec, lambda lm, _: lm),
                                          out_shardings=pair_scores.replicated_out(spec.mesh)))
  rows = batch_size * spec.mesh.shape['data'] * spec.mesh.shape['fsdp']
  examples = _scored_examples(tokenizer, conversations, saved.data.seq_len)
  scores, _ = pair_scores.score_pairs(score_fn, params, {}, examples, rows, spec.mesh)
  return [float(x) for x in scores[:, 0]]


def read_scored(path):
  """(prompt messages, response messages) of each {"prompt", "response"} (strings or
  messages) or {"messages"} line (the last message is the response)."""
  conversations = []
  for where, record in jsonl.records(path, '--score_file'):
    if 'messages' in record:
      messages = record['messages']
      chat_template.check_messages(messages, where)
      prompt, response = messages[:-1], messages[-1:]
    elif 'prompt' in record and 'response' in record:
      prompt = chat_template.as_messages(record['prompt'], 'user', where, 'prompt')
      response = chat_template.as_messages(record['response'], 'assistant', where, 'response')
    else:
      raise UserError(f'{where} needs "prompt" and "response" (or "messages")')
    conversations.append((prompt, response))
  if not conversations:
    raise UserError(f'--score_file={path} holds no line to score (it is empty or blank); give '
                    '{"prompt", "response"} lines')
  return conversations


def score_responses(score_fn, params, spec, tokenizer, conversations, seq_len, rows):
  """Scores of (prompt, response) conversations (read_scored's), in order."""
  examples = _scored_examples(tokenizer, conversations, seq_len)
  scores, _ = pair_scores.score_pairs(score_fn, params, {}, examples, rows, spec.mesh)
  return [float(s) for s in scores[:, 0]]


def dpo_accuracy(config, workdir, checkpoint=None, step=None, eval_files=(), batch_size=8):
  """Held-out accuracy of a DPO policy's implicit reward β·(log π − log π_ref)."""
  from posttrain import dpo
  directory, step, meta, saved, tokenizer, spec = _spec_and_meta(workdir, config, checkpoint,
                                                                 step)
  policy, _ = restore_params.model_params(directory, step, meta, spec)
  base = meta['base']
  reference, _ = restore_params.model_params(
      base['directory'], base['step'], restore_params.read_meta(base['directory'],
                                                                base['step']), spec)
  beta = saved.dpo.beta

  def implicit(params, frozen, batch):
    return beta * (dpo.sequence_logps(spec, params, batch)
                   - dpo.sequence_logps(spec, frozen, batch))
  score_fn = with_mesh(spec.mesh, jax.jit(implicit,
                                          out_shardings=pair_scores.replicated_out(spec.mesh)))
  rows = batch_size * spec.mesh.shape['data'] * spec.mesh.shape['fsdp']
  examples, stats = eval_pairs(eval_files, tokenizer, saved.data.seq_len)
  scores, kinds = pair_scores.score_pairs(score_fn, policy, reference, examples, rows, spec.mesh)
  return pair_scores.accuracy(scores, kinds, stats['kinds'])


def format_summary(summary):
  lines = [f'reward step {summary["step"]}: held-out accuracy {summary["accuracy"]:.3f} over '
           f'{summary["pairs"]} pairs, mean margin {summary["margin"]:.3f}']
  lines += [f'  {kind:<12} {acc:.3f}' for kind, acc in summary['accuracy_by_kind'].items()]
  if 'scores' in summary:
    lines.append('scores: ' + ' '.join(f'{s:.3f}' for s in summary['scores']))
  return '\n'.join(lines)
