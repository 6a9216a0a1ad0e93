"""The embedded preference set, derived from the embedded instruction set's real answers.

No package ships human preference data, so pairs are built deterministically at
load time: chosen = the record's reference answer; rejected = one of
- `mismatch`: a real answer to another item of the same task (does the model
  know an answer must fit its question?),
- `wrong_lang`: a real answer from the other language,
- `repeat`: the answer's first third, looped three times,
- `truncate`: the answer's first third alone.
(`mismatch` on next-line and author tasks is the hard kind: a real line or a
real poet, only not this one.)
The kind is chosen by a hash of the item, so the pairs are the same on every
machine, and the held-out split is the instruction set's (by item hash).
"""
import hashlib

from data_pipeline import chat_formats
from data_pipeline import embedded

KINDS = ('mismatch', 'wrong_lang', 'repeat', 'truncate')


def _hash(text, salt=''):
  return int(hashlib.sha1(f'{salt}:{text}'.encode('utf-8')).hexdigest()[:12], 16)


def _first_third(answer):
  return answer[:max(1, len(answer) // 3)].rstrip()


def build_pairs(records):
  """[{'prompt', 'chosen', 'rejected', 'kind'}] (TRL format, message lists)."""
  by_task, by_lang = {}, {}
  for r in records:
    by_task.setdefault(r.get('task', 'chat'), []).append(r)
    by_lang.setdefault(r.get('lang', 'en'), []).append(r)
  pairs = []
  for r in records:
    messages = r['messages']
    prompt, answer = messages[:-1], messages[-1]['content']
    key = r.get('item', answer)
    kind = KINDS[_hash(key) % len(KINDS)]
    if kind in ('repeat', 'truncate') and len(answer) < 6:
      kind = 'mismatch'  # a third of a very short answer is not a meaningful negative
    if kind == 'mismatch':
      pool = [x for x in by_task[r.get('task', 'chat')] if x['reference'] != r['reference']]
      if not pool:
        continue
      rejected = pool[_hash(key, 'mismatch') % len(pool)]['reference']
    elif kind == 'wrong_lang':
      other = 'en' if r.get('lang') == 'zh' else 'zh'
      pool = by_lang.get(other, [])
      if not pool:
        continue
      rejected = pool[_hash(key, 'lang') % len(pool)]['reference']
    elif kind == 'repeat':
      third = _first_third(answer)
      rejected = ' '.join([third] * 3) if r.get('lang') == 'en' else third * 3
    else:
      rejected = _first_third(answer)
    if rejected == answer:
      continue
    pairs.append({'prompt': prompt, 'chosen': [{'role': 'assistant', 'content': answer}],
                  'rejected': [{'role': 'assistant', 'content': rejected}], 'kind': kind,
                  'margin': 0.0})
  return pairs


def train_pairs():
  return build_pairs(chat_formats.read_chat_files(embedded.INSTRUCTION_TRAIN_FILES))


def validation_pairs():
  return build_pairs(chat_formats.read_chat_files(embedded.INSTRUCTION_VALIDATION_FILES))
