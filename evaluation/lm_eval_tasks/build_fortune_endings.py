"""Builds fortune_endings.jsonl, a 4-way multiple-choice task, from the embedded
corpus's held-out English fortunes (data_pipeline/corpus/validation_en.jsonl),
offline and deterministically:

  python evaluation/lm_eval_tasks/build_fortune_endings.py

For each held-out fortune whose first line has 8 to 16 words (letters and simple
punctuation), the context is the first half of that line's words and the right
ending is the rest; the three wrong endings are the endings of other items, drawn
with random.Random(0). Items are the first 100 such fortunes, in corpus order.
No model trains on the validation split, so a model has never seen these."""
import json
import os
import random
import re

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, '..', '..', 'data_pipeline', 'corpus', 'validation_en.jsonl')
OUT = os.path.join(HERE, 'fortune_endings.jsonl')
ITEMS, CHOICES = 100, 4
PLAIN = re.compile(r"^[A-Za-z][A-Za-z ,;:'.!?-]*$")


def first_lines(path):
  with open(path, encoding='utf-8') as f:
    for line in f:
      first = json.loads(line)['text'].strip().split('\n')[0].strip()
      words = first.split()
      if PLAIN.match(first) and 8 <= len(words) <= 16 and '  ' not in first:
        yield words


def build():
  items = []
  for words in first_lines(SOURCE):
    half = len(words) // 2
    items.append({'context': ' '.join(words[:half]), 'ending': ' '.join(words[half:])})
    if len(items) == ITEMS:
      break
  rng = random.Random(0)
  endings = [item['ending'] for item in items]
  out = []
  for number, item in enumerate(items):
    others = [e for e in endings if e != item['ending']]
    choices = rng.sample(others, CHOICES - 1) + [item['ending']]
    rng.shuffle(choices)
    out.append({'id': number, 'context': item['context'], 'choices': choices,
                'label': choices.index(item['ending'])})
  return out


if __name__ == '__main__':
  records = build()
  with open(OUT, 'w', encoding='utf-8') as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + '\n')
  print(f'{len(records)} items → {OUT}')
