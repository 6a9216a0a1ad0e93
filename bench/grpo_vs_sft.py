"""A GRPO workdir against its SFT start on the report's held-out prompts (greedy, the
report's settings): exact match and F1 per language and per task, each model's mean
and the paired difference (GRPO − SFT, prompt by prompt) with its standard error,
and the end-of-turn rate. One JSON object on stdout (and --out).

  .venv/bin/python bench/grpo_vs_sft.py --sft=runs/tiny/sft --grpo=/tmp/grpo [--out=FILE]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def answers_of(config, workdir, records):
  from evaluation import chat_eval
  from engine import restore_params
  _, params, tokenizer, spec, _, step, soft_prompt = restore_params.load(workdir, config)
  return step, chat_eval.answer(spec, params, soft_prompt, tokenizer, records,
                                config.report.max_new_tokens, 16)


def scored(answers):
  from evaluation import chat_metrics
  return [{'task': a['task'], 'lang': a['lang'], 'ended': float(a['ended']),
           'em': chat_metrics.exact_match(a['text'], a['reference']),
           'f1': chat_metrics.f1(a['text'], a['reference'], a['lang'])} for a in answers]


def compare(base, new, select):
  """{metric: {'sft', 'grpo', 'diff', 'stderr', 'n'}} over the rows select() keeps."""
  from evaluation.report.model_evals import mean_and_stderr
  rows = [(b, n) for b, n in zip(base, new) if select(b)]
  out = {'n': len(rows)}
  for metric in ('em', 'f1', 'ended'):
    diff = mean_and_stderr([n[metric] - b[metric] for b, n in rows])
    out[metric] = {'sft': sum(b[metric] for b, _ in rows) / len(rows),
                   'grpo': sum(n[metric] for _, n in rows) / len(rows),
                   'diff': diff['mean'], 'stderr': diff['stderr']}
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--sft', required=True)
  parser.add_argument('--grpo', required=True)
  parser.add_argument('--out')
  args = parser.parse_args()
  from configs import tiny
  from data_pipeline import chat_formats
  from data_pipeline import embedded
  from evaluation import chat_eval
  config = tiny.get_config()
  records = chat_formats.read_chat_files(embedded.INSTRUCTION_VALIDATION_FILES)
  records = [r for r in records if any(m['role'] == 'assistant' for m in r['messages'])]
  picked = chat_eval.spread_over_tasks(records, config.report.eval_prompts)
  sft_step, base = answers_of(config, args.sft, picked)
  grpo_step, new = answers_of(config, args.grpo, picked)
  base, new = scored(base), scored(new)
  result = {'sft_step': sft_step, 'grpo_step': grpo_step, 'prompts': len(picked),
            'all': compare(base, new, lambda r: True),
            'languages': {lang: compare(base, new, lambda r, lang=lang: r['lang'] == lang)
                          for lang in ('zh', 'en')},
            'tasks': {task: compare(base, new, lambda r, task=task: r['task'] == task)
                      for task in sorted({r['task'] for r in base})}}
  text = json.dumps(result, indent=1)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  print(text)


if __name__ == '__main__':
  main()
