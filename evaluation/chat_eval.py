"""`run.py eval` on a fine-tuned workdir: what a chat model is judged by.

- loss and perplexity on the assistant tokens of the held-out chat split;
- greedy answers to `sft.eval_prompts` held-out prompts (spread over the tasks),
  scored against each record's `reference`: exact match, F1, answer language,
  end-of-turn rate, repeated 4-gram rate, per task and per language;
- `pretrain_perplexity`: the pretraining validation perplexity of this model,
  when the workdir it was fine-tuned from has a prepared corpus (forgetting).
"""
import collections
import os

import jax

from configs.errors import UserError
from data_pipeline import chat_formats
from data_pipeline import chat_template
from data_pipeline import embedded
from data_pipeline import sft_loader
from engine import restore_params
from engine import train_step
from engine import paths
from evaluation import chat_loss
from evaluation import chat_metrics
from evaluation import evaluate
from evaluation import sampling


def spread_over_tasks(records, count):
  """The first `count` records taken round-robin over tasks (file order within one)."""
  by_task = collections.OrderedDict()
  for record in records:
    by_task.setdefault(record.get('task', 'chat'), []).append(record)
  picked, queues = [], [list(q) for q in by_task.values()]
  while len(picked) < count and any(queues):
    for queue in queues:
      if queue and len(picked) < count:
        picked.append(queue.pop(0))
  return picked


def split_prompt(record):
  """(messages before the last assistant turn, reference answer)."""
  messages = record['messages']
  last = max(i for i, m in enumerate(messages) if m['role'] == 'assistant')
  return messages[:last], record.get('reference') or messages[last]['content']


def answer(spec, params, soft_prompt, tokenizer, records, max_new_tokens, batch_size):
  """Greedy answers to each record's prompt, with what the metrics need."""
  stop_id = tokenizer.chat_ids[chat_template.END_OF_TURN]
  num_virtual = 0 if soft_prompt is None else soft_prompt.shape[0]
  answers = []
  for begin in range(0, len(records), batch_size):
    chunk = records[begin:begin + batch_size]
    prompts = [split_prompt(r)[0] for r in chunk]
    encoded = sampling.encode_prompts(tokenizer, prompts, chat=True, system=None, add_bos=True,
                                      num_virtual=num_virtual)
    tokens, counts = sampling.generate_ids(
        spec, params, soft_prompt, encoded, max_new_tokens=max_new_tokens, temperature=0.0,
        top_k=0, top_p=1.0, seed=0, stop_id=stop_id)
    for row, record in enumerate(chunk):
      ids = [int(t) for t in tokens[row, :counts[row]]]
      ended = bool(ids) and ids[-1] == stop_id
      ids = ids[:-1] if ended else ids
      # The answer's language is the reference's (a translation answers in the other one).
      answers.append({'task': record.get('task', 'chat'),
                      'lang': chat_metrics.language_of(split_prompt(record)[1])
                      or record.get('lang') or 'en',
                      'reference': split_prompt(record)[1], 'text': tokenizer.decode(ids),
                      'ids': ids, 'ended': ended,
                      'prompt': prompts[row][-1]['content']})
  return answers


def pretrain_perplexity(meta, checkpoint_dir, batch_size):
  """Pretraining validation perplexity of this checkpoint (first 16 batches), or None
  without a corpus: a pretrain checkpoint's own workdir, or the one a fine-tune names."""
  base = meta.get('pretrain_workdir')
  if meta.get('stage') in (None, 'pretrain'):
    base = os.path.dirname(os.path.dirname(checkpoint_dir))
  if not base or not paths.isdir(os.path.join(base, 'tfds')):
    return None
  import ml_collections
  base_config = ml_collections.ConfigDict(restore_params.read_meta(
      *restore_params.locate(base, None, None))['config'])
  summary = evaluate.run_eval(base_config, base, checkpoint=checkpoint_dir,
                              batch_size=batch_size, max_batches=16)
  return summary['perplexity']


def run_chat_eval(config, workdir, *, checkpoint=None, step=None, eval_files=(), batch_size=8,
                  prompts=None, keep_answers=False):
  """The chat metrics of a checkpoint; `keep_answers` adds 'answered': every (prompt
  messages, greedy answer) pair, for a reward model to score without generating again."""
  model_cfg, params, tokenizer, spec, saved, step, soft_prompt = restore_params.load(
      workdir, config, checkpoint, step)
  directory, step = restore_params.locate(workdir, checkpoint, step)
  meta = restore_params.read_meta(directory, step)
  files = tuple(eval_files) or embedded.chat_eval_files(saved)
  # This command's data.chat_format (default auto), not training's: the held-out files are
  # given here, and the fix an error line names (--config.data.chat_format) must work here.
  records = chat_formats.read_chat_files(files, config.data.chat_format)
  num_virtual = 0 if soft_prompt is None else soft_prompt.shape[0]
  examples, stats = sft_loader.tokenize_conversations(
      records, tokenizer, saved.data.seq_len, num_virtual,
      saved.get('sft', {}).get('truncation', 'truncate'))
  sft_loader.check_not_empty(examples, stats, 'the held-out chat files')

  def model_apply(model_params, prompt, batch):
    return spec.apply(model_params, batch['inputs'], batch['positions'], batch['segment_ids'],
                      prompt)
  replicated = jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec())
  eval_fn = train_step.make_eval_step(model_apply, spec.param_shardings,
                                      None if soft_prompt is None else replicated, spec.mesh)
  eval_config = saved.copy_and_resolve_references()
  eval_config.train.batch_size = batch_size * (spec.mesh.shape['data'] * spec.mesh.shape['fsdp'])
  loss = chat_loss.assistant_loss(eval_fn, params, soft_prompt, examples, eval_config, spec.mesh)
  count = config.sft.eval_prompts if prompts is None else prompts
  with_answers = [r for r in records if any(m['role'] == 'assistant' for m in r['messages'])]
  picked = spread_over_tasks(with_answers, count)
  answers = answer(spec, params, soft_prompt, tokenizer, picked, config.sft.max_new_tokens,
                   max(batch_size, 16))
  if not answers:
    raise UserError('no held-out conversation has an assistant reply to compare with')
  summary = {'step': step, 'stage': meta.get('stage', 'pretrain'),
             'method': meta.get('method'), 'loss': loss['eval_loss'],
             'perplexity': loss['eval_perplexity'], 'tokens': loss['eval_tokens'],
             **chat_metrics.summarize(answers),
             'samples': [{k: a[k] for k in ('prompt', 'text', 'reference')}
                         for a in answers[:6]]}
  summary['pretrain_perplexity'] = pretrain_perplexity(meta, os.path.join(directory, str(step)),
                                                       batch_size)
  reward_dir = (meta.get('reward') or {}).get('directory')
  if reward_dir:  # PPO: what its reward model thinks of the greedy answers
    from evaluation import reward_eval
    scores = reward_eval.reward_model_scores(reward_dir, config, [
        (split_prompt(r)[0], [{'role': 'assistant', 'content': a['text']}])
        for r, a in zip(picked, answers)], batch_size)
    summary['reward_model_score'] = sum(scores) / len(scores)
  if keep_answers:
    summary['answered'] = [(split_prompt(r)[0], a['text']) for r, a in zip(picked, answers)]
  return summary


def format_summary(summary):
  lines = [f'{summary["stage"]} step {summary["step"]}: held-out assistant loss '
           f'{summary["loss"]:.4f} (perplexity {summary["perplexity"]:.2f}, '
           f'{int(summary["tokens"])} tokens)']
  lines.append(f'{"task":<18} {"lang":>4} {"n":>4} {"EM":>6} {"F1":>6}')
  for task, r in summary['tasks'].items():
    lines.append(f'{task:<18} {r["lang"]:>4} {r["count"]:>4} {r["exact_match"]:>6.3f} '
                 f'{r["f1"]:>6.3f}')
  for lang, r in summary['languages'].items():
    lines.append(f'{"all " + lang:<18} {lang:>4} {r["count"]:>4} {r["exact_match"]:>6.3f} '
                 f'{r["f1"]:>6.3f}')
  lines.append(f'end-of-turn {summary["end_of_turn_rate"]:.3f}, answer language ok '
               f'{summary["language_ok_rate"]:.3f}, repeated 4-gram '
               f'{summary["repeat_4gram_rate"]:.3f}')
  if summary.get('reward_model_score') is not None:
    lines.append(f'reward model\'s mean score of these answers {summary["reward_model_score"]:.3f}')
  if summary.get('pretrain_perplexity') is not None:
    lines.append(f'pretraining validation perplexity {summary["pretrain_perplexity"]:.2f}')
  for sample in summary['samples'][:3]:
    lines.append(f'Q: {sample["prompt"]!r}\n  A: {sample["text"]!r}\n  ref: '
                 f'{sample["reference"]!r}')
  return '\n'.join(lines)
