"""Bad input that passes the first look must still be one error line naming the file,
the line, the field and the fix (issue 26, classes 1, 2 and 6):
- every field of every chat / preference / prompt / --score_file format is type checked;
- an empty file, a directory and invalid UTF-8 say what they are;
- every numeric config key has its domain in configs/validate.py, non-finite values
  included, and data values (a pair's margin) are checked as they are read;
- the messages that used to send the user the wrong way name the real problem."""
import json
import logging
import math

import pytest

from configs import base
from configs import validate
from configs.errors import ResumeConflict
from configs.errors import UserError
from configs.errors import unknown_config_key
from data_pipeline import chat_formats
from data_pipeline import preference
from data_pipeline import prompts
from evaluation import reward_eval
from tests.cli_helpers import one_line_error, run_cli

CONVERSATION = [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'}]
GOOD = {
    'chat': {'messages': CONVERSATION},
    'pc': {'prompt': 'q', 'completion': 'a'},
    'alpaca': {'instruction': 'q', 'input': 'x', 'output': 'a'},
    'pair': {'prompt': 'q', 'chosen': 'a', 'rejected': 'b'},
    'implicit': {'chosen': CONVERSATION, 'rejected': CONVERSATION[:1] + [
        {'role': 'assistant', 'content': 'b'}]},
    'prompt': {'prompt': 'q'},
    'score': {'prompt': 'q', 'response': 'a'},
    'score_messages': {'messages': CONVERSATION},
}
READERS = {
    'chat': chat_formats.read_chat_file, 'pc': chat_formats.read_chat_file,
    'alpaca': chat_formats.read_chat_file,
    'pair': lambda p: preference.read_pairs([p]), 'implicit': lambda p: preference.read_pairs([p]),
    'prompt': lambda p: prompts.read_prompts([p]),
    'score': reward_eval.read_scored, 'score_messages': reward_eval.read_scored,
}
WRONG_TYPES = (5, 2.5, True, None, {'a': 1}, ['x'])

# (format, field, wrong value) for every field of every format: the field set to a value
# of the wrong type (the second record of the file, so the error names line 2).
FIELDS = [
    ('chat', 'messages', 'text'), ('chat', 'messages', 5), ('chat', 'messages', {}),
    ('chat', 'messages', [{'role': 'user', 'content': 5}]),
    ('chat', 'messages', [{'role': 5, 'content': 'x'}]),
    ('chat', 'messages', ['hello']),
    ('pc', 'prompt', 5), ('pc', 'prompt', {'role': 'user'}), ('pc', 'completion', 5),
    ('pc', 'completion', [{'role': 'assistant', 'content': ['a']}]),
    ('alpaca', 'instruction', 5), ('alpaca', 'input', 5), ('alpaca', 'output', ['a']),
    ('alpaca', 'output', None),
    ('chat', 'task', ['a']), ('chat', 'reference', 3), ('alpaca', 'lang', {'x': 1}),
    ('pair', 'prompt', 5), ('pair', 'chosen', 5), ('pair', 'rejected', {'a': 'b'}),
    ('pair', 'chosen', [{'role': 'assistant', 'content': 1}]),
    ('pair', 'margin', 'big'), ('pair', 'margin', True), ('pair', 'margin', [1]),
    ('pair', 'kind', ['a']), ('implicit', 'chosen', 5), ('implicit', 'rejected', None),
    ('prompt', 'prompt', 5), ('prompt', 'prompt', None), ('prompt', 'lang', 7),
    ('score', 'prompt', 5), ('score', 'response', {'a': 1}),
    ('score_messages', 'messages', 'text'), ('score_messages', 'messages', 5),
]


def _write(path, lines):
  with open(path, 'w', encoding='utf-8') as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + '\n')
  return str(path)


@pytest.mark.parametrize('fmt,field,value', FIELDS,
                         ids=[f'{f}-{k}-{type(v).__name__}' for f, k, v in FIELDS])
def test_every_field_of_every_format_is_type_checked(tmp_path, fmt, field, value):
  path = _write(tmp_path / 'data.jsonl', [GOOD[fmt], {**GOOD[fmt], field: value}])
  with pytest.raises(UserError) as error:
    READERS[fmt](path)
  message = str(error.value)
  assert message.startswith(f'{path}:2') and f'"{field}"' in message, message
  assert '\n' not in message


@pytest.mark.parametrize('fmt', sorted(GOOD))
def test_the_good_record_of_each_format_reads(tmp_path, fmt):
  path = _write(tmp_path / 'data.jsonl', [GOOD[fmt]] * 2)
  assert len(READERS[fmt](path)) == 2


@pytest.mark.parametrize('value', ['NaN', 'Infinity', '-Infinity', '1e400'])
def test_a_margin_that_is_not_finite_is_one_line_naming_file_and_line(tmp_path, value):
  path = _write(tmp_path / 'pairs.jsonl', [
      GOOD['pair'], '{"prompt": "q", "chosen": "a", "rejected": "b", "margin": %s}' % value])
  with pytest.raises(UserError, match=rf'pairs\.jsonl:2: "margin" must be a finite number'):
    preference.read_pairs([path])
  ok = _write(tmp_path / 'ok.jsonl', [{**GOOD['pair'], 'margin': 2}, {**GOOD['pair']}])
  assert [p['margin'] for p in preference.read_pairs([ok])] == [2.0, 0.0]


@pytest.mark.parametrize('fmt', sorted(GOOD))
def test_an_empty_file_says_it_is_empty(tmp_path, fmt):
  path = _write(tmp_path / 'empty.jsonl', ['', '   '])
  with pytest.raises(UserError, match='empty'):
    READERS[fmt](path)


@pytest.mark.parametrize('fmt', sorted(GOOD))
def test_a_directory_is_not_called_missing(tmp_path, fmt):
  (tmp_path / 'folder').mkdir()
  with pytest.raises(UserError, match=r'folder is a directory, not a JSONL file; name the '
                     r'\.jsonl files inside it'):
    READERS[fmt](str(tmp_path / 'folder'))


def test_invalid_utf8_in_a_chat_file_is_replaced_with_one_warning(tmp_path, caplog):
  path = tmp_path / 'bad.jsonl'
  line = json.dumps({'messages': CONVERSATION}).encode()
  path.write_bytes(line.replace(b'"q"', b'"q\xff"') + b'\n' + line.replace(b'"a"', b'"a\xfe"')
                   + b'\n')
  with caplog.at_level(logging.WARNING):
    records = chat_formats.read_chat_file(str(path))
  assert records[0]['messages'][0]['content'] == 'q\ufffd'
  assert records[1]['messages'][1]['content'] == 'a\ufffd'
  warnings = [r.getMessage() for r in caplog.records if 'not valid UTF-8' in r.getMessage()]
  assert warnings == [f'{path}:1 is not valid UTF-8; invalid bytes were replaced by U+FFFD']


# --- class 2: every numeric config key has a domain, in configs/validate.py ---------------

def _numeric_keys(node, prefix=''):
  for key, value in node.items():
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      yield from _numeric_keys(value, name + '.')
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield name


def test_every_numeric_key_of_base_has_its_domain():
  config = base.get_config()
  keys = [k for k in _numeric_keys(config) if not k.startswith(('pipeline.', 'mesh.'))]
  assert keys and not [k for k in keys if k not in validate.DOMAINS]
  assert not [k for k in validate.DOMAINS if k not in keys]  # no stale entries
  # The pipeline's per-stage keys are keys the domains or choices name (they replace them).
  checked = {**validate.DOMAINS, **validate.CHOICES}
  for stage, sections in config.pipeline.items():
    for section, values in sections.items():
      assert all(f'{section}.{k}' in checked for k in values), (stage, section)
  validate.validate(config)  # every default is inside its domain


def _outside(domain):
  """Values just outside `domain`, and the non-finite ones."""
  if domain.startswith('>'):
    bound = float(domain.lstrip('>= '))
    below = [bound - 1] if domain.startswith('>=') else [bound, bound - 1]
    return below + [math.nan, math.inf]
  low, high = (float(x) for x in domain[1:-1].split(','))
  out = [low - 0.5, high + 0.5, math.nan]
  out += [low] if domain[0] == '(' else []
  out += [high] if domain[-1] == ')' else []
  return out


def _holds(key, value):
  """Whether the key can hold the value at all (ml_collections keeps an int key an int)."""
  node = base.get_config()
  for part in key.split('.'):
    node = node[part]
  return not isinstance(node, int) or (math.isfinite(value) and value == int(value))


CASES = [(k, v) for k, d in validate.DOMAINS.items() for v in _outside(d) if _holds(k, v)]


@pytest.mark.parametrize('key,value', CASES, ids=[f'{k}={v}' for k, v in CASES])
def test_a_value_outside_its_domain_is_one_line_naming_the_key(key, value):
  config = base.get_config()
  section, name = key.rsplit('.', 1) if '.' in key else ('', key)
  node = config
  for part in filter(None, section.split('.')):
    node = node[part]
  if isinstance(node[name], int):
    value = int(value)
  with node.ignore_type():
    node[name] = value
  if key == 'model.vocab_size':  # a reference to tokenizer.vocab_size: set both
    config.tokenizer.vocab_size = value
  with pytest.raises(UserError) as error:
    validate.validate(config)
  message = str(error.value)
  assert key.split('.')[-1] in message and '\n' not in message, message


@pytest.mark.parametrize('key,value,inside', [
    ('ppo.top_p', 1.0, True), ('ppo.top_p', 1e-6, True), ('ppo.top_p', 0.0, False),
    ('ppo.gamma', 0.0, True), ('ppo.gamma', 1.0, True), ('ppo.gamma', 1.0001, False),
    ('dpo.label_smoothing', 0.0, True), ('dpo.label_smoothing', 0.5, False),
    ('train.grad_clip', 0.0, True), ('ppo.clip', 0.0, False), ('ppo.clip', -0.2, False),
])
def test_domain_bounds_are_inclusive_or_exclusive_as_written(key, value, inside):
  assert validate.in_domain(value, validate.DOMAINS[key]) == inside


@pytest.mark.parametrize('flag,fragment', [
    ('--config.ppo.top_p=0', 'ppo.top_p=0.0 must be in (0, 1] (1 = off)'),
    ('--config.ppo.clip=-0.2', 'ppo.clip=-0.2 must be > 0'),
    ('--config.ppo.gamma=1.5', 'ppo.gamma=1.5 must be in [0, 1]'),
    ('--config.train.learning_rate=nan', 'train.learning_rate=nan must be > 0'),
])
def test_an_rl_knob_outside_its_domain_stops_before_any_work(tmp_path, flag, fragment):
  workdir = tmp_path / 'ppo'
  result = run_cli('ppo', '--config=configs/ppo_tiny.py', f'--workdir={workdir}',
                   f'--init_from={tmp_path / "nowhere"}', flag)
  one_line_error(result, fragment)
  assert not workdir.exists()


# --- class 6: messages that name the real problem and a fix that works -------------------

def test_a_mistyped_config_key_is_readable_with_a_working_suggestion():
  try:
    base.get_config().train.stepz  # noqa: B018  (the error ml_collections raises)
  except AttributeError as e:
    message = unknown_config_key(e, ['run.py', 'sft', '--config.train.stepz=3'])
  assert message == ("unknown config key 'stepz' in --config.train.stepz; did you mean "
                     '--config.train.steps? (configs/base.py lists the keys)')
  assert '\\' not in message


def test_a_mistyped_key_on_the_command_line_is_one_clean_line(tmp_path):
  result = run_cli('sft', '--config=configs/sft_tiny.py', f'--workdir={tmp_path}',
                   '--config.trian.steps=3')
  one_line_error(result, "unknown config key 'trian' in --config.trian.steps; did you mean "
                 '--config.train.steps?')
  assert '\\' not in result.stderr


def test_a_resume_conflict_keeps_its_problem_apart_from_its_fix():
  error = ResumeConflict('sft.method=full but the checkpoints were trained with lora',
                         'use a new workdir or --noresume')
  assert str(error) == ('sft.method=full but the checkpoints were trained with lora; use a new '
                        'workdir or --noresume')
  assert isinstance(error, UserError) and '--noresume' not in error.problem


def test_the_pipeline_names_its_own_key_for_a_stage_setting():
  from commands import pipeline
  from configs import stages
  config = base.get_config()
  config.pipeline.sft.train.learning_rate = 0.0
  with pytest.raises(UserError) as error:
    validate.validate(stages.for_stage(config, 'sft'))
  assert pipeline.stage_error('sft', config, error.value) == (
      'stage sft: pipeline.sft.train.learning_rate=0.0 must be > 0')
  config = base.get_config()
  config.ppo.top_p = 0.0
  with pytest.raises(UserError) as error:
    validate.validate(stages.for_stage(config, 'ppo'))
  assert pipeline.stage_error('ppo', config, error.value) == (
      'stage ppo: ppo.top_p=0.0 must be in (0, 1] (1 = off)')


def test_an_empty_prompts_file_is_not_called_too_long(tmp_path):
  path = _write(tmp_path / 'prompts.jsonl', [''])
  with pytest.raises(UserError, match=r'prompt file .*prompts\.jsonl holds no prompt \(it is '
                     'empty or blank\)'):
    prompts.read_prompts([path])
