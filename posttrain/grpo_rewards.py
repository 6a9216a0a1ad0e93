"""GRPO's rewards: `grpo.rewards` = 'name:weight,...' (weight 1 when left out).

Built-in verifiers of the embedded tasks, each the report's own definition
(evaluation/chat_metrics.py: one F1 for training and for the report):
- exact_match, f1: against the prompt's `reference` (normalisation, characters for
  Chinese and words for English, the answer language as the eval decides it);
- language: 1 if the answer is in the expected language (the reference's, else the
  prompt's), else 0;
- end_of_turn: 1 if the answer ended with the end-of-turn token (not cut off);
- no_repeat: 1 unless some 4 tokens in a row occur twice in the answer;
- reward_model: the --reward_from model's score (computed on the device by the stage);
- `some.module:function`: a user function with TRL's signature
  f(prompts, completions, **columns) -> list[float | None] (None = not applicable);
  columns are the prompt file's other keys, one entry per answer, plus
  `completion_ids`. Conversational prompts (message lists) get completions as
  [{"role": "assistant", "content": text}], as TRL gives them.
"""
import importlib
import math
import re

from configs.errors import UserError
from evaluation import chat_metrics

NEEDS_REFERENCE = ('exact_match', 'f1')
_NUMBER = r'[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?'


def _exact_match(answers):
  return [chat_metrics.exact_match(a['text'], a['reference']) for a in answers]


def _f1(answers):
  return [chat_metrics.f1(a['text'], a['reference'], a['lang']) for a in answers]


def _language(answers):
  return [float(chat_metrics.language_of(a['text']) == a['lang']) for a in answers]


def _end_of_turn(answers):
  return [float(a['ended']) for a in answers]


def _no_repeat(answers):
  return [1.0 - float(chat_metrics.has_repeated_ngram(a['ids'])) for a in answers]


BUILTINS = {'exact_match': _exact_match, 'f1': _f1, 'language': _language,
            'end_of_turn': _end_of_turn, 'no_repeat': _no_repeat}
REWARD_MODEL = 'reward_model'


def parse(spec):
  """[(name, weight)] from 'name:weight,...'; a user function is 'module:function[:w]'."""
  out = []
  for part in [p.strip() for p in str(spec).split(',') if p.strip()]:
    name, weight = part, 1.0
    head, _, tail = part.rpartition(':')
    # 'module:function' has a colon too: the tail is a weight when it is a number literal
    # (a function may be named nan or inf), or whenever the head is a built-in's name.
    if head and (re.fullmatch(_NUMBER, tail) or head in BUILTINS or head == REWARD_MODEL):
      try:
        name, weight = head, float(tail)
      except ValueError:
        raise UserError(f'grpo.rewards: the weight of {head} is "{tail}"; give a number') from None
    if not math.isfinite(weight):
      raise UserError(f'grpo.rewards: the weight of {name} is {weight}; give a finite number')
    if name not in BUILTINS and name != REWARD_MODEL and ':' not in name:
      raise UserError(f'grpo.rewards: unknown reward "{name}"; use one of '
                      f'{", ".join([*BUILTINS, REWARD_MODEL])} or a module:function')
    out.append((name, weight))
  if not out:
    raise UserError('grpo.rewards is empty; give name:weight pairs, e.g. f1:1,end_of_turn:0.2')
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise UserError(f'grpo.rewards names a reward twice ({spec}); give each once')
  return out


def load_user_function(name):
  module_name, _, function_name = name.rpartition(':')
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # pylint: disable=broad-except  (any failure while importing it)
    raise UserError(f'grpo.rewards: cannot import {module_name} ({type(e).__name__}: {e}); '
                    'put the module on PYTHONPATH') from None
  fn = getattr(module, function_name, None)
  if not callable(fn):
    raise UserError(f'grpo.rewards: {module_name} has no function {function_name}')
  return fn


class Rewards:
  """The rewards of one run: `score(answers)` gives {name: [float or nan]} per answer."""

  def __init__(self, spec):
    self.spec = parse(spec)
    self.names, self.weights = [], []
    self.functions = {}
    for name, weight in self.spec:
      label = name
      if ':' in name:
        fn = load_user_function(name)
        self.functions[name] = fn
        label = getattr(fn, '__name__', name.rpartition(':')[2])
      self.names.append(label)
      self.weights.append(weight)
    self.uses_reward_model = any(n == REWARD_MODEL for n, _ in self.spec)

  def check_prompts(self, records):
    """exact_match / f1 need every prompt's reference; the first without one is named."""
    for name, _ in self.spec:
      if name in NEEDS_REFERENCE:
        for i, r in enumerate(records):
          if not isinstance(r.get('reference'), str) or not r['reference'].strip():
            where = r.get('where', f'prompt {i}')
            raise UserError(f'grpo.rewards asks for {name} but {where} has no "reference"; '
                            f'give every prompt a reference or drop {name} from grpo.rewards')

  def probe(self, records):
    """Calls each user function once on `records` with their references as answers, so a
    function that does not run, or returns the wrong length or NaN, stops the run before
    anything is written."""
    answers = [{'index': i, 'text': r.get('reference') or '', 'ids': [], 'ended': True,
                'reference': r.get('reference'), 'lang': r['lang']}
               for i, r in enumerate(records)]
    for name, fn in self.functions.items():
      self._call_user(name, fn, answers, records)

  def score(self, answers, records, rm_scores=None):
    """answers: [{'index', 'text', 'ids', 'ended', 'reference', 'lang'}] → (R, K) list of
    lists (None → nan). A user function's mistake is one error line."""
    columns = []
    for (name, _), label in zip(self.spec, self.names):
      if name in BUILTINS:
        values = BUILTINS[name](answers)
      elif name == REWARD_MODEL:
        values = [float(s) for s in rm_scores]
      else:
        values = self._call_user(name, self.functions[name], answers, records)
      columns.append(values)
    return [list(row) for row in zip(*columns)]

  @staticmethod
  def _call_user(name, fn, answers, records):
    prompts, completions, extra = [], [], {}
    keys = sorted({k for a in answers for k in records[a['index']]['columns']})
    for a in answers:
      record = records[a['index']]
      prompts.append(record['prompt'])
      conversational = isinstance(record['prompt'], list)
      completions.append([{'role': 'assistant', 'content': a['text']}] if conversational
                         else a['text'])
    for k in keys:
      extra[k] = [records[a['index']]['columns'].get(k) for a in answers]
    extra['completion_ids'] = [list(a['ids']) for a in answers]
    try:
      values = fn(prompts, completions, **extra)
    except Exception as e:  # pylint: disable=broad-except  (the user's code, any error)
      raise UserError(f'grpo.rewards: {name} raised {type(e).__name__}: {e}') from None
    try:
      values = list(values)
    except TypeError:
      raise UserError(f'grpo.rewards: {name} returned {type(values).__name__}, not a list of '
                      'numbers') from None
    if len(values) != len(answers):
      raise UserError(f'grpo.rewards: {name} returned {len(values)} values for '
                      f'{len(answers)} completions; return one per completion')
    out = []
    for v in values:
      if v is None:
        out.append(math.nan)
        continue
      try:
        ok = not isinstance(v, bool) and math.isfinite(float(v))
      except (TypeError, ValueError):
        ok = False
      if not ok:
        raise UserError(f'grpo.rewards: {name} returned {v!r}; return finite numbers '
                        '(None where the reward does not apply)')
      out.append(float(v))
    return out
