"""Preference pairs: the TRL formats, rows and masks, skips and counts, read errors,
and the embedded preference set built from the instruction set's answers."""
import json

import numpy as np
import pytest

from configs.errors import UserError
from data_pipeline import chat_formats
from data_pipeline import embedded
from data_pipeline import preference
from data_pipeline import preference_embedded

SEQ = 64
SYSTEM, Q1, A1, Q2 = 'Be brief.', 'What is two plus two?', 'Four.', 'And three plus three?'
CHOSEN, REJECTED = 'Six.', 'Seven, I think.'


def _msg(role, content):
  return {'role': role, 'content': content}


def _jsonl(path, records):
  with open(path, 'w', encoding='utf-8') as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + '\n')
  return str(path)


def _by_hand(tokenizer, messages):
  """The chat template written out: BOS, then <|role|> content <|end_of_turn|> per message."""
  ids = [tokenizer.bos_id]
  spans = []
  for m in messages:
    ids.append(tokenizer.chat_ids[f'<|{m["role"]}|>'])
    content = tokenizer.encode(m['content'])
    spans.append((len(ids), len(ids) + len(content) + 1))  # content and its end-of-turn
    ids += content + [tokenizer.chat_ids['<|end_of_turn|>']]
  return np.asarray(ids, np.int32), spans


def _same_examples(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_three_formats_give_the_same_pair_and_rows(tiny_tokenizer, tmp_path):
  single = [
      {'prompt': Q1, 'chosen': A1, 'rejected': REJECTED},
      {'prompt': [_msg('user', Q1)], 'chosen': [_msg('assistant', A1)],
       'rejected': [_msg('assistant', REJECTED)]},
      {'chosen': [_msg('user', Q1), _msg('assistant', A1)],
       'rejected': [_msg('user', Q1), _msg('assistant', REJECTED)]},
  ]
  path = _jsonl(tmp_path / 'pairs.jsonl', single)
  pairs = preference.read_pairs([path])
  assert len(pairs) == 3
  want = {'prompt': [_msg('user', Q1)], 'chosen': [_msg('assistant', A1)],
          'rejected': [_msg('assistant', REJECTED)], 'margin': 0.0, 'kind': 'pair'}
  for p in pairs:
    assert p == want
  examples, stats = preference.tokenize_pairs(pairs, tiny_tokenizer, SEQ)
  assert stats == {'pairs': 3, 'identical': 0, 'no_room': 0, 'truncated': 0, 'kinds': ['pair']}
  for e in examples[1:]:
    _same_examples([examples[0]], [e])
  # Multi-turn with a system message: explicit message lists == implicit shared prefix.
  history = [_msg('system', SYSTEM), _msg('user', Q1), _msg('assistant', A1), _msg('user', Q2)]
  explicit = preference.to_pair({'prompt': history, 'chosen': [_msg('assistant', CHOSEN)],
                                 'rejected': [_msg('assistant', REJECTED)]}, 'x:1')
  implicit = preference.to_pair({'chosen': history + [_msg('assistant', CHOSEN)],
                                 'rejected': history + [_msg('assistant', REJECTED)]}, 'x:2')
  assert explicit == implicit
  assert implicit['prompt'] == history
  assert implicit['chosen'] == [_msg('assistant', CHOSEN)]
  _same_examples(preference.tokenize_pairs([explicit], tiny_tokenizer, SEQ)[0],
                 preference.tokenize_pairs([implicit], tiny_tokenizer, SEQ)[0])


def test_rows_and_loss_mask_mark_only_the_response(tiny_tokenizer):
  history = [_msg('system', SYSTEM), _msg('user', Q1), _msg('assistant', A1), _msg('user', Q2)]
  pair = preference.to_pair({'prompt': history, 'chosen': [_msg('assistant', CHOSEN)],
                             'rejected': [_msg('assistant', REJECTED)]}, 'x:1')
  (example,), stats = preference.tokenize_pairs([pair], tiny_tokenizer, SEQ)
  assert stats['truncated'] == 0
  for name in preference.ROW_FIELDS:
    assert example[name].shape == (2, SEQ) and example[name].dtype == np.int32
  for row, response in enumerate((CHOSEN, REJECTED)):
    ids, spans = _by_hand(tiny_tokenizer, history + [_msg('assistant', response)])
    n = len(ids)
    assert n < SEQ
    np.testing.assert_array_equal(example['inputs'][row, :n], ids)
    assert not example['inputs'][row, n:].any()
    np.testing.assert_array_equal(example['targets'][row, :n - 1], ids[1:])
    assert not example['targets'][row, n - 1:].any()
    np.testing.assert_array_equal(example['segment_ids'][row], (np.arange(SEQ) < n).astype(int))
    np.testing.assert_array_equal(example['positions'][row, :n], np.arange(n))
    assert not example['positions'][row, n:].any()
    # Target position i predicts ids[i + 1]: the mask is on exactly the last message's
    # content and end-of-turn -- not the earlier assistant turn A1, not any role marker.
    begin, end = spans[-1]
    want = np.zeros(SEQ, np.int32)
    want[begin - 1:end - 1] = 1
    np.testing.assert_array_equal(example['loss_mask'][row], want)
    assert example['loss_mask'][row].sum() == len(tiny_tokenizer.encode(response)) + 1
    marked = example['targets'][row][example['loss_mask'][row] > 0]
    np.testing.assert_array_equal(
        marked, tiny_tokenizer.encode(response) + [tiny_tokenizer.chat_ids['<|end_of_turn|>']])
    # The earlier assistant turn is in the inputs but never marked.
    a1_begin, a1_end = spans[2]
    assert not example['loss_mask'][row, a1_begin - 1:a1_end - 1].any()
  np.testing.assert_array_equal(example['margin'], [0.0, 0.0])
  assert example['margin'].dtype == np.float32


def test_identical_pairs_are_counted_and_skipped(tiny_tokenizer):
  good = preference.to_pair({'prompt': Q1, 'chosen': A1, 'rejected': REJECTED}, 'x:1')
  same = preference.to_pair({'prompt': Q1, 'chosen': A1, 'rejected': A1}, 'x:2')
  same_implicit = preference.to_pair({'chosen': [_msg('user', Q2), _msg('assistant', CHOSEN)],
                                      'rejected': [_msg('user', Q2),
                                                   _msg('assistant', CHOSEN)]}, 'x:3')
  examples, stats = preference.tokenize_pairs([same, good, same_implicit], tiny_tokenizer, SEQ)
  assert stats['identical'] == 2 and stats['pairs'] == 3 and stats['no_room'] == 0
  _same_examples(examples, preference.tokenize_pairs([good], tiny_tokenizer, SEQ)[0])
  only, stats = preference.tokenize_pairs([same, same_implicit], tiny_tokenizer, SEQ)
  assert only == [] and stats['identical'] == 2
  with pytest.raises(UserError, match=r'the pairs: none of its 2 pairs is usable \(2 with '
                     r'chosen == rejected, 0 whose prompt'):
    preference.check_not_empty(only, stats, 'the pairs')


def test_a_prompt_without_room_is_counted_and_skipped(tiny_tokenizer):
  long_prompt = ' '.join(['a much longer question about many things'] * 12)
  pair = preference.to_pair({'prompt': long_prompt, 'chosen': A1, 'rejected': REJECTED}, 'x:1')
  prompt_len = len(_by_hand(tiny_tokenizer, [_msg('user', long_prompt)])[0])
  good = preference.to_pair({'prompt': Q1, 'chosen': A1, 'rejected': REJECTED}, 'x:2')
  # seq_len == the prompt's length: not one response token would be a target.
  examples, stats = preference.tokenize_pairs([pair, good], tiny_tokenizer, prompt_len)
  assert stats['no_room'] == 1 and len(examples) == 1
  with pytest.raises(UserError, match=r'none of its 1 pairs is usable \(0 with chosen == '
                     r'rejected, 1 whose prompt leaves no room'):
    preference.check_not_empty(*preference.tokenize_pairs([pair], tiny_tokenizer, prompt_len),
                               'the training pairs')
  # Two tokens more: kept and truncated; the inputs end on the response's first token and
  # the first two response tokens are targets. (At exactly one token more only the
  # <|assistant|> marker would be in the inputs: see the report, not pinned here.)
  (example,), stats = preference.tokenize_pairs([pair], tiny_tokenizer, prompt_len + 2)
  assert stats['no_room'] == 0 and stats['truncated'] == 2
  np.testing.assert_array_equal(example['loss_mask'].sum(axis=1), [2, 2])
  for row, response in enumerate((A1, REJECTED)):
    first = tiny_tokenizer.encode(response)[:2]
    assert example['inputs'][row, -1] == first[0]
    np.testing.assert_array_equal(example['targets'][row, prompt_len:], first)


def test_a_long_response_keeps_its_start_and_is_counted(tiny_tokenizer):
  long_answer = ' '.join(f'point {i} is that things are fine' for i in range(40))
  pair = preference.to_pair({'prompt': Q1, 'chosen': long_answer, 'rejected': REJECTED}, 'x:1')
  (example,), stats = preference.tokenize_pairs([pair], tiny_tokenizer, SEQ)
  assert stats['truncated'] == 1  # the chosen only
  ids, spans = _by_hand(tiny_tokenizer, [_msg('user', Q1), _msg('assistant', long_answer)])
  assert len(ids) > SEQ + 1
  np.testing.assert_array_equal(example['inputs'][0], ids[:SEQ])
  np.testing.assert_array_equal(example['targets'][0], ids[1:SEQ + 1])
  assert example['segment_ids'][0].all()
  begin = spans[-1][0]
  np.testing.assert_array_equal(example['loss_mask'][0], np.arange(SEQ) >= begin - 1)
  # The end-of-turn fell off: no target is it.
  assert tiny_tokenizer.chat_ids['<|end_of_turn|>'] not in example['targets'][0, begin - 1:]


def test_margin_and_kind_are_kept(tiny_tokenizer, tmp_path):
  records = [{'prompt': Q1, 'chosen': A1, 'rejected': REJECTED, 'kind': 'zeta', 'margin': 2},
             {'prompt': Q2, 'chosen': CHOSEN, 'rejected': REJECTED, 'kind': 'alpha',
              'margin': 0.5},
             {'prompt': SYSTEM, 'chosen': A1, 'rejected': CHOSEN}]
  pairs = preference.read_pairs([_jsonl(tmp_path / 'p.jsonl', records)])
  assert [(p['kind'], p['margin']) for p in pairs] == [('zeta', 2.0), ('alpha', 0.5),
                                                       ('pair', 0.0)]
  examples, stats = preference.tokenize_pairs(pairs, tiny_tokenizer, SEQ)
  assert stats['kinds'] == ['alpha', 'pair', 'zeta']
  assert [e['kind'].tolist() for e in examples] == [[2, 2], [0, 0], [1, 1]]
  assert [e['margin'].tolist() for e in examples] == [[2.0, 2.0], [0.5, 0.5], [0.0, 0.0]]
  with pytest.raises(UserError, match='x:7: "margin" must be a finite number'):
    preference.to_pair({'prompt': Q1, 'chosen': A1, 'rejected': CHOSEN, 'margin': 'big'}, 'x:7')


@pytest.mark.parametrize('lines,message', [
    (['{"prompt": "a", "chosen": "b", "rejected": "c"}', '', '{"prompt": oops'],
     r'bad\.jsonl:3 is not valid JSON'),
    (['{"prompt": "a", "chosen": "b"}'],
     r'bad\.jsonl:1 needs "chosen" and "rejected" \(and optionally "prompt"\)'),
    (['{"prompt": "a", "chosen": "b", "rejected": "c"}', '["chosen", "rejected"]'],
     r'bad\.jsonl:2 (needs "chosen" and "rejected"|is not a JSON object)'),
    (['{"prompt": "a", "chosen": "b", "rejected": "c"}',
      '{"chosen": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}], '
      '"rejected": "c"}'], r"bad\.jsonl:2: unknown role 'bot'"),
    (['{"prompt": "a", "chosen": [{"role": "user", "content": "b"}], '
      '"rejected": [{"role": "user", "content": "c"}]}'],
     r'bad\.jsonl:1: the responses hold no assistant message'),
    (['{"prompt": "a", "chosen": [], "rejected": "c"}'], r'bad\.jsonl:1: "chosen" must be a non-empty list'),
])
def test_read_pairs_errors_name_file_and_line(tmp_path, lines, message):
  path = _jsonl(tmp_path / 'bad.jsonl', lines)
  with pytest.raises(UserError, match=message):
    preference.read_pairs([path])


def test_read_pairs_missing_file(tmp_path):
  with pytest.raises(UserError, match=r'preference file .*nowhere\.jsonl does not exist'):
    preference.read_pairs([str(tmp_path / 'nowhere.jsonl')])


@pytest.fixture(scope='module')
def embedded_sets():
  records = {
      'train': chat_formats.read_chat_files(embedded.INSTRUCTION_TRAIN_FILES),
      'validation': chat_formats.read_chat_files(embedded.INSTRUCTION_VALIDATION_FILES)}
  return {'train': preference_embedded.train_pairs(),
          'validation': preference_embedded.validation_pairs(), 'records': records}


def _prompt_key(messages):
  return json.dumps(messages, ensure_ascii=False, sort_keys=True)


def test_embedded_set_is_deterministic_with_every_kind(embedded_sets):
  for split, build in (('train', preference_embedded.train_pairs),
                       ('validation', preference_embedded.validation_pairs)):
    pairs = embedded_sets[split]
    assert pairs == build()  # built again: the same pairs in the same order
    assert pairs == preference_embedded.build_pairs(embedded_sets['records'][split])
    kinds = {p['kind'] for p in pairs}
    assert kinds == set(preference_embedded.KINDS), (split, kinds)
    for p in pairs:
      assert p['chosen'] != p['rejected']
      assert p['margin'] == 0.0
      assert [m['role'] for m in p['chosen']] == [m['role'] for m in p['rejected']] == [
          'assistant']
  assert len(embedded_sets['train']) > 5000 and len(embedded_sets['validation']) > 200


def test_embedded_train_and_validation_are_disjoint(embedded_sets):
  train = {_prompt_key(p['prompt']) for p in embedded_sets['train']}
  validation = {_prompt_key(p['prompt']) for p in embedded_sets['validation']}
  assert train and validation and not train & validation
  assert len(validation) == len(embedded_sets['validation'])  # one pair per held-out prompt


def test_embedded_rejected_answers_are_derived_as_documented(embedded_sets):
  for split in ('train', 'validation'):
    records = embedded_sets['records'][split]
    by_prompt = {_prompt_key(r['messages'][:-1]): r for r in records}
    references = {}
    for r in records:
      references.setdefault(r['reference'], set()).add((r['task'], r.get('lang')))
    seen = set()
    for p in embedded_sets[split]:
      record = by_prompt[_prompt_key(p['prompt'])]
      chosen, rejected = p['chosen'][0]['content'], p['rejected'][0]['content']
      assert chosen == record['messages'][-1]['content']  # the reference answer
      third = chosen[:max(1, len(chosen) // 3)].rstrip()
      if p['kind'] == 'truncate':
        assert rejected == third and len(chosen) >= 6
      elif p['kind'] == 'repeat':
        want = ' '.join([third] * 3) if record.get('lang') == 'en' else third * 3
        assert rejected == want and len(chosen) >= 6
        assert rejected.startswith(third) and rejected.count(third) >= 3
      elif p['kind'] == 'mismatch':  # another real answer of the same task
        assert any(task == record['task'] for task, _ in references[rejected])
        assert rejected != record['reference']
      else:  # wrong_lang: a real answer in the other language
        other = 'en' if record.get('lang') == 'zh' else 'zh'
        assert any(lang == other for _, lang in references[rejected]), (chosen, rejected)
      seen.add(p['kind'])
    assert seen == set(preference_embedded.KINDS)
