"""The CLI contract: commands, config overrides, and one-line errors with exit 2."""
import json
import os

import pytest

from tests.cli_helpers import file_hashes, run_cli


def _assert_one_line_error(result, *fragments):
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope='module')
def prepared_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('cli'))
  for command in ('tokenizer', 'prepare'):  # `pipeline` = these + pretrain (README test)
    result = run_cli(command, '--config=configs/tiny.py', f'--workdir={workdir}')
    assert result.returncode == 0, result.stderr
  return workdir


def test_data_commands_write_tokenizer_dataset_and_config(prepared_workdir):
  assert os.path.isfile(os.path.join(prepared_workdir, 'tokenizer', 'tokenizer.model'))
  report = json.load(open(os.path.join(prepared_workdir, 'tokenizer', 'report.json')))
  assert report['vocab_size'] == 2048
  assert report['chars_per_token[validation_en.jsonl]'] > 2.0
  assert report['chars_per_token[validation_zh.jsonl]'] > 1.1
  config = json.load(open(os.path.join(prepared_workdir, 'config.json')))
  assert config['model']['d_model'] == 128 and config['data']['seq_len'] == 128


def test_override_reaches_the_resolved_config(prepared_workdir):
  result = run_cli('prepare', '--config=configs/tiny.py', f'--workdir={prepared_workdir}',
                   '--config.train.steps=7')
  assert result.returncode == 0, result.stderr
  assert json.load(open(os.path.join(prepared_workdir, 'config.json')))['train']['steps'] == 7


BAD_INPUTS = [
    (['--config.nope=1'], ['unknown config key', 'nope']),
    (['--config.data.seq_len=abc'], ['seq_len']),
    (['--config.data.seq_len=1'], ['data.seq_len=1', '>= 2']),
    (['--config.data.seq_len=4096'], ['exceeds model.max_seq_len']),
    (['--config.model.num_kv_heads=3'], ['not divisible by model.num_kv_heads']),
    (['--config.tokenizer.vocab_size=100', '--config.model.vocab_size=100'], ['too small']),
    (['--config.data.train_files=/no/such/file.txt'], ['does not exist']),
    (['--config.data.tfds_name=no_such_dataset'], ['no_such_dataset']),
    (['--config=configs/no_such_config.py'], ['cannot load --config']),
    (['--config.model.dtype=float8'], ['model.dtype']),
    (['--no_such_flag'], ['no_such_flag']),
]


@pytest.mark.parametrize('extra,fragments', BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_workdir_untouched(prepared_workdir, extra, fragments):
  before = file_hashes(prepared_workdir)
  args = ['prepare', f'--workdir={prepared_workdir}']
  if not any(a.startswith('--config=') for a in extra):
    args.append('--config=configs/tiny.py')
  result = run_cli(*args, *extra)
  _assert_one_line_error(result, *fragments)
  assert file_hashes(prepared_workdir) == before


def test_unknown_nested_key_without_config_is_one_line(tmp_path):
  result = run_cli('eval', f'--workdir={tmp_path}', '--config.train.bogus=1')
  _assert_one_line_error(result, 'unknown config key', 'bogus')


def test_empty_corpus_and_tokenizer_vocab_too_large(tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('\n\n')
  result = run_cli('tokenizer', '--config=configs/tiny.py', f'--workdir={tmp_path / "w"}',
                   f'--config.data.train_files={empty}')
  _assert_one_line_error(result, 'holds no documents')
  small = tmp_path / 'small.txt'
  small.write_text('a small corpus\n\nwith two documents')
  result = run_cli('tokenizer', '--config=configs/tiny.py', f'--workdir={tmp_path / "w"}',
                   f'--config.data.train_files={small}')
  _assert_one_line_error(result, 'does not fit this corpus')
  assert not os.path.exists(tmp_path / 'w' / 'tokenizer' / 'tokenizer.model')


def test_unknown_commands_and_stages_without_a_start(tmp_path):
  _assert_one_line_error(run_cli('frobnicate'), 'unknown command')
  for stage in ('sft', 'reward', 'dpo', 'ppo'):  # each needs the model it starts from
    _assert_one_line_error(run_cli(stage, '--config=configs/tiny.py',
                                   f'--workdir={tmp_path / stage}'), '--init_from is required')
    assert not (tmp_path / stage).exists()


def test_missing_workdir_is_a_user_error():
  _assert_one_line_error(run_cli('prepare', '--config=configs/tiny.py'), '--workdir')


def test_prepare_refuses_a_workdir_built_from_other_files(prepared_workdir, tmp_path):
  other = tmp_path / 'other.txt'
  other.write_text('one document\n\nanother document')
  result = run_cli('prepare', '--config=configs/tiny.py', f'--workdir={prepared_workdir}',
                   f'--config.data.train_files={other}')
  _assert_one_line_error(result, 'prepared from other files')


def test_describe_builds_7b_abstractly_and_plans_memory():
  result = run_cli('describe', '--config=configs/llama_7b.py', '--num_devices=64', '--json')
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['params'] == 6_738_415_616
  assert report['mesh'] == {'data': 1, 'fsdp': 64, 'tensor': 1}
  # params + Adam mu/nu in float32, split 64 ways: 6.74e9 * 12 bytes / 64
  assert abs(report['per_device_state_gib'] - 6_738_415_616 * 12 / 64 / 2**30) < 1e-6
