"""GRPO's rewards (posttrain/grpo_rewards.py) on hand-made Chinese and English answers:
the verifiers are the report's metrics (full-width punctuation, spaces, case), the
`name:weight` spec, a user function from a module in a temporary directory with TRL's
signature, and each mistake of a user function as one UserError."""
import math
import textwrap

import pytest

from configs.errors import UserError
from evaluation import chat_metrics
from posttrain import grpo_rewards

RECORDS = [
    {'prompt': [{'role': 'user', 'content': '“折戟沉沙铁未销”的作者是谁？'}], 'reference': '杜牧',
     'lang': 'zh', 'columns': {'reference': '杜牧', 'task': 'poem_author'}},
    {'prompt': 'Which US city is known as the City of Brotherly Love?',
     'reference': 'Philadelphia', 'lang': 'en',
     'columns': {'reference': 'Philadelphia', 'task': 'chat_en'}},
]


def _answer(index, text, ids=(1, 2, 3), ended=True):
  record = RECORDS[index]
  return {'index': index, 'text': text, 'ids': list(ids), 'ended': ended,
          'reference': record['reference'], 'lang': record['lang']}


# (record, answer text, exact match, F1, in the right language)
CASES = [
    (0, '杜牧', 1.0, 1.0, 1.0),
    (0, '“杜牧”。', 1.0, 1.0, 1.0),  # full-width quotes and stop
    (0, ' 杜牧 ！', 1.0, 1.0, 1.0),  # outer spaces, full-width !
    (0, '杜 牧', 0.0, 1.0, 1.0),  # a space inside: not the same string, the same characters
    (0, '杜甫', 0.0, 0.5, 1.0),  # characters for Chinese: 1 of 2 in common
    (0, '作者是杜牧', 0.0, 2 * (2 / 5) * 1 / (2 / 5 + 1), 1.0),
    (0, 'Du Mu', 0.0, 0.0, 0.0),  # English letters for a Chinese answer
    (1, 'Philadelphia', 1.0, 1.0, 1.0),
    (1, '  PHILADELPHIA! ', 1.0, 1.0, 1.0),  # case, spaces, punctuation
    (1, 'Ｐｈｉｌａｄｅｌｐｈｉａ', 1.0, 1.0, 1.0),  # full-width Latin letters (NFKC)
    (1, 'the city of Philadelphia', 0.0, 0.4, 1.0),  # words for English: P 1/4, R 1
    (1, 'Boston', 0.0, 0.0, 1.0),
    (1, '费城', 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize('index,text,em,f1,lang_ok', CASES)
def test_verifiers_on_hand_made_answers(index, text, em, f1, lang_ok):
  rewards = grpo_rewards.Rewards('exact_match:1,f1:1,language:1')
  (row,) = rewards.score([_answer(index, text)], RECORDS)
  assert row[0] == em and row[1] == pytest.approx(f1) and row[2] == lang_ok
  # One definition for training and the report: the report's own functions agree.
  record = RECORDS[index]
  assert row[0] == chat_metrics.exact_match(text, record['reference'])
  assert row[1] == chat_metrics.f1(text, record['reference'], record['lang'])


def test_end_of_turn_and_no_repeat():
  rewards = grpo_rewards.Rewards('end_of_turn,no_repeat:0.5')
  assert rewards.weights == [1.0, 0.5] and rewards.names == ['end_of_turn', 'no_repeat']
  rows = rewards.score([_answer(0, 'a', ids=(5, 6, 7, 8, 5, 6, 7, 8), ended=False),
                        _answer(1, 'b', ids=(5, 6, 7, 8, 5, 6, 7, 9), ended=True)], RECORDS)
  assert rows == [[0.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize('spec,fragment', [
    ('exact_match:1,f2:1', 'unknown reward "f2"'),
    ('f1:1,f1:2', 'names a reward twice'),
    ('', 'grpo.rewards is empty'),
    ('f1:inf', 'the weight of f1 is inf'),
    ('no_such_module_xyz:score', 'cannot import no_such_module_xyz'),
    ('json:no_such_function', 'json has no function no_such_function'),
])
def test_bad_specs(spec, fragment):
  with pytest.raises(UserError, match=fragment):
    grpo_rewards.Rewards(spec)


def test_exact_match_needs_a_reference_on_every_prompt():
  rewards = grpo_rewards.Rewards('exact_match:1')
  records = [dict(RECORDS[0]), {'prompt': 'hi', 'reference': None, 'lang': 'en',
                                'columns': {}, 'where': 'p.jsonl:2'}]
  with pytest.raises(UserError, match='exact_match but p.jsonl:2 has no "reference"'):
    rewards.check_prompts(records)
  grpo_rewards.Rewards('language:1,end_of_turn:1').check_prompts(records)  # no reference needed


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  (tmp_path / 'my_rewards_for_test.py').write_text(textwrap.dedent('''
      seen = []

      def length_bonus(prompts, completions, **columns):
        seen.append((prompts, completions, columns))
        texts = [c[0]['content'] if isinstance(c, list) else c for c in completions]
        return [None if task == 'skip' else len(text)
                for text, task in zip(texts, columns['task'])]

      def raises(prompts, completions, **columns):
        raise ValueError('bad input')

      def short(prompts, completions, **columns):
        return [1.0]

      def nan(prompts, completions, **columns):
        return [float('nan')] * len(completions)
      '''))
  monkeypatch.syspath_prepend(str(tmp_path))
  import importlib
  import sys
  sys.modules.pop('my_rewards_for_test', None)
  return importlib.import_module('my_rewards_for_test')


def test_user_function_gets_trl_arguments_and_none_is_not_applicable(user_module):
  rewards = grpo_rewards.Rewards('f1:1,my_rewards_for_test:length_bonus:0.5')
  assert rewards.names == ['f1', 'length_bonus'] and rewards.weights == [1.0, 0.5]
  records = [*RECORDS, {'prompt': 'skip me', 'reference': 'x', 'lang': 'en',
                        'columns': {'reference': 'x', 'task': 'skip'}}]
  answers = [_answer(0, '杜牧'), _answer(1, 'Boston!', ids=(4, 5)),
             dict(_answer(1, 'y'), index=2)]
  rows = rewards.score(answers, records)
  assert rows[0] == [1.0, 2.0] and rows[1] == [0.0, 7.0]
  assert rows[2][0] == 0.0 and math.isnan(rows[2][1])
  prompts, completions, columns = user_module.seen[-1]
  assert prompts == [records[0]['prompt'], records[1]['prompt'], 'skip me']
  # Conversational prompts get message completions, plain ones strings (TRL).
  assert completions == [[{'role': 'assistant', 'content': '杜牧'}], 'Boston!', 'y']
  assert columns == {'reference': ['杜牧', 'Philadelphia', 'x'],
                     'task': ['poem_author', 'chat_en', 'skip'],
                     'completion_ids': [[1, 2, 3], [4, 5], [1, 2, 3]]}


@pytest.mark.parametrize('name,fragment', [
    ('raises', 'my_rewards_for_test:raises raised ValueError: bad input'),
    ('short', 'returned 1 values for 2 completions'),
    ('nan', 'returned nan; return finite numbers'),
])
def test_user_function_mistakes_are_one_error(user_module, name, fragment):
  rewards = grpo_rewards.Rewards(f'my_rewards_for_test:{name}')
  with pytest.raises(UserError, match=fragment):
    rewards.probe(RECORDS)  # what the stage calls before any work
  with pytest.raises(UserError, match=fragment):
    rewards.score([_answer(0, 'a'), _answer(1, 'b')], RECORDS)
