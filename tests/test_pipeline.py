"""`run.py pipeline` end to end on a cut-down tiny config: every stage in its folder,
SIGTERM during SFT and a re-run that finishes without redoing pretraining, the report
card's files, and the checks that refuse a changed config before any work."""
import json
import re

import pytest

from tests.cli_helpers import run_cli, tree_hashes
from tests.pipeline_helpers import CUT_DOWN, TRAINED, pipeline_lines

pytestmark = pytest.mark.slow


def test_sigterm_during_sft_stops_with_a_line_naming_the_stage_and_step(finished):
  workdir, out1, _, _ = finished
  stopped = [l for l in pipeline_lines(out1) if 'stopped in sft' in l or 'received in sft' in l]
  assert len(stopped) == 1, pipeline_lines(out1)
  step = int(re.search(r'step (\d+)', stopped[0]).group(1))
  assert 4 <= step < TRAINED['sft']
  assert 'pipeline: pretrain done' in out1 and 'reward' not in ''.join(pipeline_lines(out1))


def test_the_rerun_skips_finished_stages_and_resumes_sft(finished):
  workdir, _, out2, pretrain_files = finished
  lines = pipeline_lines(out2)
  assert any(l.startswith('pipeline: pretrain already done') for l in lines), lines
  assert not re.search(r'^pretrain: step', out2, re.M)  # no pretraining this time
  assert tree_hashes(workdir / 'pretrain') == pretrain_files  # not a byte of it rewritten
  for stage in ('sft', 'reward', 'ppo', 'dpo', 'report'):
    assert any(l.startswith(f'pipeline: {stage} done in ') for l in lines), (stage, lines)
  # SFT went on from its checkpoint: its metrics hold each logged step once.
  steps = [json.loads(l)['step'] for l in open(workdir / 'sft' / 'metrics.jsonl')
           if 'loss' in json.loads(l)]
  assert steps == sorted(set(steps)) and steps[-1] == TRAINED['sft']


def test_every_stage_is_a_normal_workdir_with_its_final_checkpoint(finished):
  workdir = finished[0]
  record = json.load(open(workdir / 'pipeline.json'))
  for stage, steps in TRAINED.items():
    folder = workdir / stage
    assert (folder / 'checkpoints' / str(steps)).is_dir(), stage
    assert (folder / 'tokenizer' / 'tokenizer.model').is_file(), stage
    resolved = json.load(open(folder / 'config.json'))
    assert resolved['train']['steps'] == steps, stage
    assert record['stages'][stage]['status'] == 'done'
    assert record['stages'][stage]['wall_s'] > 0
  # The stages read their own keys: SFT's sequence length, PPO's prompts per iteration.
  assert json.load(open(workdir / 'sft' / 'config.json'))['data']['seq_len'] == 256
  assert json.load(open(workdir / 'ppo' / 'config.json'))['train']['batch_size'] == 8
  # A stage folder works with the ordinary commands.
  result = run_cli('generate', f'--workdir={workdir / "ppo"}', '--chat', '--prompt=Hello',
                   '--max_new_tokens=4', '--json')
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout.strip().splitlines()[-1])


def test_the_report_card_is_built_and_every_image_it_shows_exists(finished):
  report = finished[0] / 'report'
  html = (report / 'index.html').read_text()
  images = re.findall(r'<img[^>]+src="([^"]+)"', html)
  assert len(images) >= 5
  for src in images:
    assert not src.startswith(('http:', 'https:', '//')), src
    path = report / src
    assert path.is_file() and path.stat().st_size > 1000, src
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', src
  assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from elsewhere
  data = json.load(open(report / 'report.json'))
  markdown = (report / 'report.md').read_text()
  for model in ('pretrain', 'sft', 'dpo', 'ppo'):
    row = data['models'][model]
    assert row['status'] == 'ok', (model, row)
    assert row['chat_loss'] > 0 and 0 <= row['end_of_turn_rate'] <= 1
    assert row['reward_model_score'] is not None
    assert 0 < row['reward_model_score_stderr'] < 0.5  # over the held-out prompts
    if model != 'sft':  # against SFT on the same 8 prompts
      paired = row['reward_model_score_vs_sft']
      assert paired['n'] == 8 and paired['stderr'] >= 0
      assert abs(paired['mean'] - (row['reward_model_score']
                                   - data['models']['sft']['reward_model_score'])) < 1e-6
  for name in ('base', 'SFT', 'DPO', 'PPO'):
    assert name in markdown, name
  xz = data['bits_per_byte']['xz']['bits_per_byte']
  assert abs(xz - 2.238) < 0.01  # xz -9e on the embedded validation text after the training text
  assert data['bits_per_byte']['model']['bits_per_byte'] > 0


def test_a_finished_stage_with_changed_settings_is_refused_before_any_work(finished):
  workdir = finished[0]
  before = tree_hashes(workdir)
  result = run_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}', '--stages=sft,reward',
                   '--config.pipeline.sft.train.learning_rate=0.5')
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(errors) == 1 and errors[0].startswith('error: '), result.stderr
  assert 'sft' in errors[0] and 'train.learning_rate' in errors[0]
  assert tree_hashes(workdir) == before
  # Another model preset: its tokenizer keys differ first, but the line names the model's.
  other = run_cli('pipeline', '--config=configs/small.py', f'--workdir={workdir}')
  assert other.returncode == 2, other.stderr[-2000:]
  line = other.stderr.strip().splitlines()[-1]
  assert line.startswith('error: ') and 'model.d_model 128 -> 384' in line, line
  assert tree_hashes(workdir) == before


def test_post_training_can_start_from_a_pretraining_workdir_elsewhere(finished, tmp_path):
  pretrained = finished[0] / 'pretrain'
  workdir = tmp_path / 'post'
  result = run_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}', f'--init_from={pretrained}',
                   '--stages=sft', '--config.pipeline.sft.train.steps=2')
  assert result.returncode == 0, result.stderr[-2000:]
  assert (workdir / 'sft' / 'checkpoints' / '2').is_dir()
  assert not (workdir / 'pretrain').exists()
  meta = json.load(open(workdir / 'pipeline.json'))['stages']
  assert list(meta) == ['sft'] and meta['sft']['status'] == 'done'
  # --init_from gives the pretrained model: asking to pretrain as well is refused.
  again = run_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}', f'--init_from={pretrained}',
                  '--stages=pretrain,sft')
  assert again.returncode == 2 and 'drop pretrain from --stages' in again.stderr


def test_pretrain_alone_brings_its_tokenizer_and_dataset(tmp_path):
  workdir = tmp_path / 'w'
  result = run_cli('pipeline', '--config=configs/tiny.py', f'--workdir={workdir}',
                   '--stages=pretrain', '--config.train.steps=4', '--config.train.eval_batches=1')
  assert result.returncode == 0, result.stderr[-2000:]
  lines = pipeline_lines(result.stdout)
  assert [l.split(' done')[0] for l in lines[:3]] == [
      'pipeline: tokenizer', 'pipeline: prepare', 'pipeline: pretrain'], lines
  assert (workdir / 'pretrain' / 'checkpoints' / '4').is_dir()
  assert not (workdir / 'sft').exists() and not (workdir / 'report').exists()


def test_bad_stage_lists_are_one_line_errors(tmp_path):
  for stages, fragment in (('pretrain,bogus', 'unknown stage bogus'),
                           ('sft', 'add pretrain to --stages')):
    result = run_cli('pipeline', '--config=configs/tiny.py', f'--workdir={tmp_path / "w"}',
                     f'--stages={stages}')
    assert result.returncode == 2, result.stderr
    errors = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert not (tmp_path / 'w' / 'pipeline.json').exists()
