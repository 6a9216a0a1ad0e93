"""One vocabulary knob, and stage configs that equal the pipeline's."""
import json

import pytest

from configs import base
from configs import stages
from configs import tiny
from configs import sft_tiny
from configs import ppo_tiny
from tests.cli_helpers import run_cli


def test_model_vocab_follows_the_tokenizer_and_either_key_sets_both():
  config = tiny.get_config()
  assert config.model.vocab_size == config.tokenizer.vocab_size == 2048
  config.tokenizer.vocab_size = 4096
  assert config.model.vocab_size == 4096
  config.model.vocab_size = 3000
  assert config.tokenizer.vocab_size == 3000
  staged = stages.for_stage(config, 'sft')  # a stage's copy keeps the link
  staged.tokenizer.vocab_size = 512
  assert staged.model.vocab_size == 512 and config.model.vocab_size == 3000


def test_the_vocab_flag_reaches_both_keys_in_the_resolved_config(tmp_path):
  workdir = tmp_path / 'w'
  result = run_cli('tokenizer', '--config=configs/tiny.py', f'--workdir={workdir}',
                   '--config.tokenizer.vocab_size=3072')
  assert result.returncode == 0, result.stderr
  resolved = json.load(open(workdir / 'config.json'))
  assert resolved['tokenizer']['vocab_size'] == resolved['model']['vocab_size'] == 3072
  report = json.load(open(workdir / 'tokenizer' / 'report.json'))
  assert report['vocab_size'] == 3072


def test_a_stage_config_takes_its_pipeline_keys_and_keeps_the_rest():
  config = tiny.get_config()
  config.pipeline.sft.train.steps = 7
  config.pipeline.sft.data.seq_len = 200
  staged = stages.for_stage(config, 'sft')
  assert (staged.train.steps, staged.data.seq_len) == (7, 200)
  assert staged.train.learning_rate == config.pipeline.sft.train.learning_rate
  # Untouched: pretraining's own keys, the model, and every other stage's keys.
  assert (config.train.steps, config.data.seq_len) == (tiny.get_config().train.steps, 128)
  # Pretraining's optimizer stays pretraining's: every stage fine-tunes with AdamW.
  assert (config.train.optimizer, staged.train.optimizer) == ('muon', 'adamw')
  assert staged.model.to_dict() == config.model.to_dict()
  assert staged.train.b2 == config.train.b2 and staged.ppo.to_dict() == config.ppo.to_dict()
  assert stages.for_stage(config, 'pretrain').to_dict() == config.to_dict()


@pytest.mark.parametrize('stage', stages.STAGES)
def test_every_stage_section_names_only_existing_keys(stage):
  config = base.get_config()
  for section, values in config.pipeline[stage].items():
    for key in values:
      assert key in config[section], f'pipeline.{stage}.{section}.{key}'


def test_stage_presets_equal_the_pipelines_stage_configs():
  assert sft_tiny.get_config().to_dict() == stages.for_stage(tiny.get_config(), 'sft').to_dict()
  assert ppo_tiny.get_config().train.steps == tiny.get_config().pipeline.ppo.train.steps
  assert ppo_tiny.get_config().data.seq_len == 128
