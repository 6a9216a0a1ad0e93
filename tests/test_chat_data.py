"""Chat data: the template's ids and mask, the JSONL formats, tokenisation rules,
and packed SFT batches whose loss is exactly the sum of the conversations' own."""
import json

import jax
import numpy as np
import pytest

from configs import tiny
from configs.errors import UserError
from data_pipeline import chat_formats
from data_pipeline import chat_template
from data_pipeline import sft_loader
from engine import lm_loss
from engine import mesh as mesh_lib
from engine import train_state

SYSTEM = 'You are a terse assistant.'
USER1 = 'What is the capital of France?'
ASSIST1 = 'Paris.'
USER2 = 'And of Italy? Answer in one word.'
ASSIST2 = 'Rome'
CONVERSATION = [
    {'role': 'system', 'content': SYSTEM},
    {'role': 'user', 'content': USER1},
    {'role': 'assistant', 'content': ASSIST1},
    {'role': 'user', 'content': USER2},
    {'role': 'assistant', 'content': ASSIST2},
]


def _write_jsonl(path, records):
  with open(path, 'w', encoding='utf-8') as f:
    for record in records:
      f.write((record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
              + '\n')
  return str(path)


def _encode(tok, messages):
  return chat_template.encode(tok, messages)


# --- the template ------------------------------------------------------------------------------

def test_encode_multi_turn_ids_and_mask(tiny_tokenizer):
  tok = tiny_tokenizer
  ids, mask = chat_template.encode(tok, CONVERSATION)
  eot = tok.chat_ids['<|end_of_turn|>']
  expected_ids, expected_mask = [tok.bos_id], [0]
  for message in CONVERSATION:
    content = tok.encode(message['content'])
    assert content  # every content is non-empty text
    expected_ids += [tok.chat_ids[f'<|{message["role"]}|>']] + content + [eot]
    trained = int(message['role'] == 'assistant')
    expected_mask += [0] + [trained] * len(content) + [trained]
  assert ids.dtype == np.int32 and mask.dtype == np.int32
  np.testing.assert_array_equal(ids, expected_ids)
  np.testing.assert_array_equal(mask, expected_mask)
  # The mask is exactly the assistant contents plus their end-of-turn ids.
  n_trained = len(tok.encode(ASSIST1)) + 1 + len(tok.encode(ASSIST2)) + 1
  assert int(mask.sum()) == n_trained
  # The control tokens are distinct ids, none of them BOS, and never produced by text.
  control = [tok.chat_ids[n] for n in ('<|system|>', '<|user|>', '<|assistant|>',
                                       '<|end_of_turn|>')]
  assert len(set(control)) == 4 and tok.bos_id not in control
  assert not set(tok.encode('<|assistant|> hi <|end_of_turn|>')) & set(control)
  # Role markers and BOS are never trained on; every end-of-turn after an assistant is.
  for i, token in enumerate(ids):
    if token in control[:3] or token == tok.bos_id:
      assert mask[i] == 0
  eot_positions = np.flatnonzero(ids == eot)
  assert list(mask[eot_positions]) == [0, 0, 1, 0, 1]


def test_generation_prompt_ends_with_assistant_marker(tiny_tokenizer):
  tok = tiny_tokenizer
  ids = chat_template.prompt_ids(tok, USER1, system=SYSTEM)
  full, _ = _encode(tok, CONVERSATION[:2])
  np.testing.assert_array_equal(ids, np.concatenate([full, [tok.chat_ids['<|assistant|>']]]))


# --- the file formats --------------------------------------------------------------------------

def test_every_format_reads_to_the_same_ids(tiny_tokenizer, tmp_path):
  tok = tiny_tokenizer
  single = [{'role': 'user', 'content': USER1}, {'role': 'assistant', 'content': ASSIST1}]
  instruction, inp = 'Translate to French.', 'Good morning'
  alpaca_conv = [{'role': 'user', 'content': instruction + '\n\n' + inp},
                 {'role': 'assistant', 'content': 'Bonjour'}]
  alpaca_no_input = [{'role': 'user', 'content': instruction},
                     {'role': 'assistant', 'content': 'Bonjour'}]
  cases = {
      'messages': ([{'messages': CONVERSATION, 'task': 't'}], CONVERSATION),
      'pc_strings': ([{'prompt': USER1, 'completion': ASSIST1}], single),
      'pc_lists': ([{'prompt': CONVERSATION[:4], 'completion': CONVERSATION[4:]}],
                   CONVERSATION),
      'alpaca_input': ([{'instruction': instruction, 'input': inp, 'output': 'Bonjour'}],
                       alpaca_conv),
      'alpaca_no_input': ([{'instruction': instruction, 'output': 'Bonjour'}], alpaca_no_input),
      'alpaca_empty_input': ([{'instruction': instruction, 'input': '', 'output': 'Bonjour'}],
                             alpaca_no_input),
  }
  for name, (records, conversation) in cases.items():
    path = _write_jsonl(tmp_path / f'{name}.jsonl', records)
    read = chat_formats.read_chat_file(path)
    assert len(read) == 1, name
    assert read[0]['messages'] == conversation, name
    got_ids, got_mask = _encode(tok, read[0]['messages'])
    want_ids, want_mask = _encode(tok, conversation)
    np.testing.assert_array_equal(got_ids, want_ids, err_msg=name)
    np.testing.assert_array_equal(got_mask, want_mask, err_msg=name)
  # Alpaca's user turn is instruction + blank line + input, as one content string.
  read = chat_formats.read_chat_file(str(tmp_path / 'alpaca_input.jsonl'))
  assert read[0]['messages'][0]['content'] == 'Translate to French.\n\nGood morning'
  # Other keys are kept beside the messages.
  assert chat_formats.read_chat_file(str(tmp_path / 'messages.jsonl'))[0]['task'] == 't'


def test_format_is_detected_per_file(tmp_path):
  assert chat_formats.detect({'messages': []}) == 'messages'
  assert chat_formats.detect({'prompt': 'a', 'completion': 'b'}) == 'prompt_completion'
  assert chat_formats.detect({'instruction': 'a', 'output': 'b'}) == 'alpaca'
  assert chat_formats.detect({'prompt': 'a'}) is None
  assert chat_formats.detect({'text': 'a'}) is None
  a = _write_jsonl(tmp_path / 'a.jsonl', [{'messages': CONVERSATION}] * 2)
  b = _write_jsonl(tmp_path / 'b.jsonl', [{'instruction': 'x', 'output': 'y'},
                                          {'instruction': 'z', 'output': 'w', 'input': 'q'}])
  c = _write_jsonl(tmp_path / 'c.jsonl', [{'prompt': 'p', 'completion': 'c'}])
  records = chat_formats.read_chat_files([a, b, c])
  assert [len(r['messages']) for r in records] == [5, 5, 2, 2, 2]
  assert records[3]['messages'][0]['content'] == 'z\n\nq'
  assert records[4]['messages'] == [{'role': 'user', 'content': 'p'},
                                    {'role': 'assistant', 'content': 'c'}]
  # Within one file, the first record decides: a later record of another format is an error.
  mixed = _write_jsonl(tmp_path / 'mixed.jsonl', [{'messages': CONVERSATION},
                                                  {'instruction': 'x', 'output': 'y'}])
  with pytest.raises(UserError, match=r"mixed\.jsonl:2 is in the alpaca format \(instruction/"
                     r"output\), but the file's first record \(.*mixed\.jsonl:1\) is messages "
                     r"\(messages\); one format per file"):
    chat_formats.read_chat_file(mixed)
  # A forced format applies to every record; a record of another format says which it is.
  with pytest.raises(UserError, match=r"a\.jsonl:1 is in the messages format \(messages\), but "
                     r"data.chat_format='alpaca' asks for instruction/output; set "
                     r"--config.data.chat_format=auto \(or =messages\)"):
    chat_formats.read_chat_file(a, forced_format='alpaca')
  # Blank lines are skipped.
  blank = _write_jsonl(tmp_path / 'blank.jsonl', ['', json.dumps({'messages': CONVERSATION}),
                                                  '   '])
  assert len(chat_formats.read_chat_file(blank)) == 1


def test_bad_chat_files_are_user_errors(tmp_path):
  good = json.dumps({'messages': CONVERSATION})
  not_json = _write_jsonl(tmp_path / 'not_json.jsonl', [good, '{"messages": [oops'])
  with pytest.raises(UserError, match=r'not_json\.jsonl:2 is not valid JSON .*one JSON object '
                     'per line'):
    chat_formats.read_chat_file(not_json)
  unknown = _write_jsonl(tmp_path / 'unknown.jsonl', [{'text': 'hello'}])
  with pytest.raises(UserError, match=r'unknown\.jsonl:1 has none of the known chat fields '
                     r'\(messages; prompt/completion; instruction/output\)'):
    chat_formats.read_chat_file(unknown)
  role = _write_jsonl(tmp_path / 'role.jsonl', [
      good, {'messages': [{'role': 'user', 'content': 'a'}, {'role': 'bot', 'content': 'b'}]}])
  with pytest.raises(UserError, match=r"role\.jsonl:2: unknown role 'bot'; use one of system, "
                     'user, assistant'):
    chat_formats.read_chat_file(role)
  array = _write_jsonl(tmp_path / 'array.jsonl', ['[1, 2]'])
  with pytest.raises(UserError, match='is not a JSON object'):
    chat_formats.read_chat_file(array)
  with pytest.raises(UserError, match='does not exist'):
    chat_formats.read_chat_file(str(tmp_path / 'missing.jsonl'))
  empty_messages = _write_jsonl(tmp_path / 'empty_messages.jsonl', [{'messages': []}])
  with pytest.raises(UserError, match='must be a non-empty list'):
    chat_formats.read_chat_file(empty_messages)
  no_content = _write_jsonl(tmp_path / 'no_content.jsonl', [{'messages': [{'role': 'user'}]}])
  with pytest.raises(UserError, match='needs "role" and "content"'):
    chat_formats.read_chat_file(no_content)


# --- tokenisation rules ------------------------------------------------------------------------

def test_tokenize_counts_empty_truncated_and_dropped(tiny_tokenizer):
  tok = tiny_tokenizer
  normal = {'messages': CONVERSATION[1:3]}
  no_assistant = {'messages': CONVERSATION[:2]}
  long_answer = {'messages': [{'role': 'user', 'content': 'Hi'},
                              {'role': 'assistant', 'content': 'word ' * 200}]}
  long_question = {'messages': [{'role': 'user', 'content': 'word ' * 200},
                                {'role': 'assistant', 'content': 'ok'}]}
  seq_len = 32
  normal_ids, normal_mask = _encode(tok, normal['messages'])
  assert len(normal_ids) - 1 <= seq_len
  records = [normal, no_assistant, long_answer]
  examples, stats = sft_loader.tokenize_conversations(records, tok, seq_len)
  long_ids, long_mask = _encode(tok, long_answer['messages'])
  assert stats == {'conversations': 3, 'empty': 1, 'truncated': 1, 'dropped_long': 0,
                   'cut_off': 0, 'trained_tokens': int(normal_mask[1:].sum())
                   + int(long_mask[1:seq_len + 1].sum())}
  assert len(examples) == 2
  np.testing.assert_array_equal(examples[0]['inputs'], normal_ids[:-1])
  np.testing.assert_array_equal(examples[0]['targets'], normal_ids[1:])
  np.testing.assert_array_equal(examples[0]['loss_mask'], normal_mask[1:])
  truncated = examples[1]
  assert len(truncated['inputs']) == seq_len
  np.testing.assert_array_equal(truncated['inputs'], long_ids[:seq_len])
  np.testing.assert_array_equal(truncated['targets'], long_ids[1:seq_len + 1])
  np.testing.assert_array_equal(truncated['loss_mask'], long_mask[1:seq_len + 1])

  # Truncation that cuts off every assistant token: the conversation is skipped, counted
  # once ("cut_off"), neither as truncated nor as without an assistant reply.
  gone, gstats = sft_loader.tokenize_conversations([long_question], tok, seq_len)
  assert gone == [] and gstats['trained_tokens'] == 0
  assert (gstats['cut_off'], gstats['empty'], gstats['truncated']) == (1, 0, 0)

  records = [normal, no_assistant, long_answer, long_question]
  dropped, dstats = sft_loader.tokenize_conversations(records, tok, seq_len, truncation='drop')
  assert dstats['dropped_long'] == 2 and dstats['truncated'] == 0 and dstats['empty'] == 1
  assert len(dropped) == 1
  np.testing.assert_array_equal(dropped[0]['inputs'], normal_ids[:-1])

  # seq_len + 1 ids fit exactly (inputs of seq_len tokens); one more does not.
  exact, estats = sft_loader.tokenize_conversations([normal], tok, len(normal_ids) - 1)
  assert estats['truncated'] == 0 and len(exact[0]['inputs']) == len(normal_ids) - 1
  _, estats = sft_loader.tokenize_conversations([normal], tok, len(normal_ids) - 2)
  assert estats['truncated'] == 1

  empty, estats = sft_loader.tokenize_conversations([no_assistant, long_question], tok, seq_len)
  assert empty == [] and (estats['empty'], estats['cut_off']) == (1, 1)
  with pytest.raises(UserError, match=r'none of its 2 conversations has an assistant reply to '
                     r'train on \(1 without an assistant turn, 1 whose reply starts beyond '
                     r'data.seq_len, 0 dropped as too long\)'):
    sft_loader.check_not_empty(empty, estats, 'the training chat files')
  sft_loader.check_not_empty(examples, stats, 'fine')  # no error


def test_prompt_tuning_placeholders_are_never_trained(tiny_tokenizer):
  tok = tiny_tokenizer
  n = 5
  ids, mask = _encode(tok, CONVERSATION)
  (example,), stats = sft_loader.tokenize_conversations([{'messages': CONVERSATION}], tok, 128,
                                                        num_virtual=n)
  assert stats['trained_tokens'] == int(mask.sum())
  np.testing.assert_array_equal(example['inputs'][:n], [tok.pad_id] * n)
  np.testing.assert_array_equal(example['inputs'][n:], ids[:-1])
  np.testing.assert_array_equal(example['targets'][n - 1:], ids)
  np.testing.assert_array_equal(example['loss_mask'][:n], 0)
  np.testing.assert_array_equal(example['loss_mask'][n - 1:], mask)


# --- packing -----------------------------------------------------------------------------------

def _conversations(rng, count):
  words = ['alpha', 'beta', 'gamma', 'delta', 'river', 'stone', 'light', '诗', '月', 'moon']
  records = []
  for i in range(count):
    turns = []
    if i % 3 == 0:
      turns.append({'role': 'system', 'content': 'Be brief.'})
    for _ in range(1 + i % 2):
      turns.append({'role': 'user', 'content': ' '.join(rng.choice(words, rng.integers(1, 8)))})
      turns.append({'role': 'assistant',
                    'content': ' '.join(rng.choice(words, rng.integers(1, 10)))})
    records.append({'messages': turns})
  return records


def _packed_batches(examples, seq_len, rows):
  return list(sft_loader.make_dataset(examples, seq_len=seq_len, batch_size=rows, seed=0,
                                      shuffle=False, num_epochs=1, drop_remainder=False))


def test_packing_keeps_conversations_whole(tiny_tokenizer):
  tok = tiny_tokenizer
  seq_len, rows = 64, 4
  examples, _ = sft_loader.tokenize_conversations(
      _conversations(np.random.default_rng(0), 30), tok, seq_len)
  assert len(examples) == 30
  batches = _packed_batches(examples, seq_len, rows)
  seen = []
  for batch in batches:
    assert set(batch) == {'inputs', 'targets', 'loss_mask', 'segment_ids', 'positions'}
    for r in range(batch['inputs'].shape[0]):
      seg = batch['segment_ids'][r]
      ids = [s for s in np.unique(seg) if s > 0]
      # Segments are contiguous runs numbered 1..k, padding (0) only at the end.
      assert ids == list(range(1, len(ids) + 1))
      nonzero = np.flatnonzero(seg)
      assert np.all(seg[nonzero[-1] + 1:] == 0) and len(nonzero) == nonzero[-1] + 1
      assert np.all(np.diff(seg[nonzero]) >= 0)
      assert np.all(batch['loss_mask'][r][seg == 0] == 0)
      for s in ids:
        where = seg == s
        piece = {k: batch[k][r][where] for k in ('inputs', 'targets', 'loss_mask')}
        np.testing.assert_array_equal(batch['positions'][r][where], np.arange(where.sum()))
        seen.append(piece)
  # Every conversation appears exactly once, whole, in one row.
  assert len(seen) == len(examples)
  remaining = list(examples)
  for piece in seen:
    match = [i for i, e in enumerate(remaining)
             if len(e['inputs']) == len(piece['inputs'])
             and all(np.array_equal(e[k], piece[k]) for k in piece)]
    assert match, 'a packed segment is not one whole conversation'
    remaining.pop(match[0])
  assert not remaining


def test_packed_prompt_tuning_placeholders_have_mask_zero(tiny_tokenizer):
  tok = tiny_tokenizer
  n, seq_len = 4, 64
  examples, _ = sft_loader.tokenize_conversations(
      _conversations(np.random.default_rng(1), 12), tok, seq_len, num_virtual=n)
  for batch in _packed_batches(examples, seq_len, 4):
    real = batch['segment_ids'] > 0
    virtual = real & (batch['positions'] < n)
    assert virtual.sum() == n * sum(len(np.unique(s[s > 0])) for s in batch['segment_ids'])
    assert np.all(batch['inputs'][virtual] == tok.pad_id)
    assert np.all(batch['loss_mask'][virtual] == 0)
    assert batch['loss_mask'].sum() > 0


def test_packed_loss_equals_sum_of_conversation_losses(tiny_tokenizer):
  tok = tiny_tokenizer
  config = tiny.get_config()
  seq_len, rows = 64, 4
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  spec = train_state.ModelSpec(config.model, mesh)
  params = jax.jit(spec.init_params)(jax.random.key(3))
  examples, stats = sft_loader.tokenize_conversations(
      _conversations(np.random.default_rng(2), 24), tok, seq_len)
  batches = _packed_batches(examples, seq_len, rows)
  assert sum(b['inputs'].shape[0] for b in batches) < len(examples)  # packing did pack

  @jax.jit
  def sums(params, batch):
    logits = spec.apply(params, batch['inputs'], batch['positions'], batch['segment_ids'])
    ce, _, count = lm_loss.token_loss_sums(logits, batch['targets'], batch['loss_mask'], 0.0)
    return ce, count

  packed_ce, packed_count = 0.0, 0.0
  for batch in batches:
    ce, count = sums(params, batch)
    packed_ce, packed_count = packed_ce + float(ce), packed_count + float(count)

  alone_ce, alone_count = 0.0, 0.0
  for e in examples:  # one conversation per row, padded (segment 0) to seq_len
    length = len(e['inputs'])
    pad = seq_len - length
    row = {k: np.pad(e[k], (0, pad))[None] for k in ('inputs', 'targets', 'loss_mask')}
    row['segment_ids'] = np.pad(np.ones(length, np.int32), (0, pad))[None]
    row['positions'] = np.pad(np.arange(length, dtype=np.int32), (0, pad))[None]
    ce, count = sums(params, row)
    alone_ce, alone_count = alone_ce + float(ce), alone_count + float(count)

  assert packed_count == alone_count == stats['trained_tokens'] > 0
  assert abs(packed_ce - alone_ce) <= 1e-4 * abs(alone_ce), (packed_ce, alone_ce)
  # Random init: about ln(vocab) per token, not a degenerate zero.
  assert abs(alone_ce / alone_count - np.log(config.model.vocab_size)) < 0.5
