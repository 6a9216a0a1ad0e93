"""The report card from synthetic stage folders (no model is trained here): the xz
baseline, the curves, the page and its images, the tables' numbers, missing stages,
and the CLI's error line. tests/test_pipeline.py builds it from a real run."""
import json
import lzma
import os
import re

import pytest

from configs import base
from evaluation import report as report_lib
from evaluation.report import collect
from evaluation.report import model_evals
from evaluation.report import plots
from evaluation.report import render
from evaluation.report import xz_baseline
from tests.cli_helpers import run_cli

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def direct_xz_bits(train, val):
  filters = [{'id': lzma.FILTER_LZMA2, 'preset': 9 | lzma.PRESET_EXTREME,
              'dict_size': 64 * 2**20}]
  size = lambda b: len(lzma.compress(b, format=lzma.FORMAT_XZ, filters=filters))
  return 8 * (size(train + val) - size(train)) / len(val)


def test_xz_baseline_is_the_extra_bytes_of_lzma(tmp_path):
  train = ('The quick brown fox jumps over the lazy dog.\n\n' * 40
           + '床前明月光，疑是地上霜。\n\n')
  val = 'The quick brown fox jumps over a lazy cat.\n\n举头望明月，低头思故乡。\n\n'
  expected = direct_xz_bits(train.encode(), val.encode())
  result = xz_baseline.cached_baseline(train, val, str(tmp_path))
  assert result['bits_per_byte'] == pytest.approx(expected, abs=1e-12)
  assert result['val_bytes'] == len(val.encode()) and result['train_bytes'] == len(train.encode())
  assert 0 < result['bits_per_byte'] < 8 * len(val.encode())
  # cached under the texts' hash: the same pair reads the file, another pair gets its own
  assert len(os.listdir(tmp_path)) == 1
  assert xz_baseline.cached_baseline(train, val, str(tmp_path)) == result
  xz_baseline.cached_baseline(train, val + 'more\n\n', str(tmp_path))
  assert len(os.listdir(tmp_path)) == 2
  # only the tail of the training text is kept when it is longer than the limit
  tail = xz_baseline.cached_baseline(train, val, str(tmp_path), max_train_bytes=100)
  assert tail['train_bytes'] == 100 and tail['train_truncated']
  assert tail['bits_per_byte'] == pytest.approx(direct_xz_bits(train.encode()[-100:],
                                                               val.encode()), abs=1e-12)


def test_xz_texts_are_the_prepared_documents(tmp_path):
  train_file, val_file = tmp_path / 'train.txt', tmp_path / 'val.jsonl'
  train_file.write_text('first doc\n\n\nsecond doc\n')
  val_file.write_text(json.dumps({'text': '第一'}) + '\n' + json.dumps({'text': 'two'}) + '\n')
  config = base.get_config()
  config.data.train_files = (str(train_file),)
  config.data.eval_files = (str(val_file),)
  train, val = xz_baseline.corpus_texts(config, str(tmp_path))
  assert train == 'first doc\n\nsecond doc\n\n'
  assert val == '第一\n\ntwo\n\n'


def synthetic_rows():
  rows = [{'step': 0, 'eval_loss': 7.5, 'eval_perplexity': 1800.0}]
  for step in range(10, 60, 10):
    rows.append({'step': step, 'loss': 8.0 - step / 20, 'lr': 1e-3, 'grad_norm': 1.0,
                 'tokens_per_s': 1000.0 + step, 'mfu': 0.1 + step / 1000})
  rows.append({'step': 50, 'eval_loss': 5.5, 'eval_perplexity': 245.0})
  return rows


def test_curves_are_non_empty_pngs(tmp_path):
  ppo_rows = [{'step': s, 'objective/scores': -1.0 + s / 10, 'objective/kl': s / 20,
               'objective/entropy': 6.0, 'response_length': 30.0 + s} for s in range(1, 5)]
  images = plots.stage_curves(str(tmp_path), {'pretrain': {'metrics': synthetic_rows()},
                                              'ppo': {'metrics': ppo_rows},
                                              'sft': {'metrics': [{'step': 1, 'x': 1.0}]},
                                              'dpo': {'status': 'not run'}})
  assert set(images) == {'pretrain', 'ppo'}  # nothing to draw for sft and dpo: no image
  assert images['pretrain']['panels'] == ['loss', 'validation perplexity']
  assert len(images['ppo']['panels']) == 4
  for stage, image in images.items():
    with open(tmp_path / image['image'], 'rb') as f:
      data = f.read()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, stage
  assert sorted(os.listdir(tmp_path)) == ['curves_ppo.png', 'curves_pretrain.png']
  assert plots.series([{'step': 2, 'a': 1.0}, {'step': 1, 'a': float('nan')},
                       {'step': 2, 'a': 3.0}], 'a') == ([2], [3.0])


def write_stage(workdir, stage, rows, config=None):
  folder = workdir / stage
  folder.mkdir(parents=True)
  with open(folder / 'metrics.jsonl', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
    f.write('{"step": 60, "loss"')  # a line cut short by a kill
  if config is not None:
    (folder / 'config.json').write_text(json.dumps(config))


def small_corpus_config(tmp_path):
  (tmp_path / 'train.txt').write_text('alpha beta gamma\n\ndelta epsilon\n')
  (tmp_path / 'val.txt').write_text('alpha gamma\n')
  config = base.get_config()
  config.data.train_files = (str(tmp_path / 'train.txt'),)
  config.data.eval_files = (str(tmp_path / 'val.txt'),)
  return json.loads(config.to_json())


def fake_model(step, loss, score):
  chat = {'loss': loss, 'perplexity': 2.0 ** loss, 'exact_match': 0.25, 'f1': 0.5,
          'languages': {'zh': {'count': 2, 'exact_match': 0.125, 'f1': 0.375},
                        'en': {'count': 2, 'exact_match': 0.625, 'f1': 0.875}},
          'tasks': {'poem_author': {'count': 2, 'lang': 'zh', 'exact_match': 0.5,
                                    'f1': 0.75}},
          'language_ok_rate': 0.8125, 'end_of_turn_rate': 0.6875, 'repeat_4gram_rate': 0.0625,
          'pretrain_perplexity': 123.456, 'answers': 4}
  return {'step': step, 'fingerprint': 'f', 'chat': chat, 'answers': [],
          'greedy': [f'greedy {step} <b>|x'] * 6, 'sampled': [f'sampled {step}\x19'] * 6}


def test_report_holds_the_numbers_and_marks_missing_stages(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  write_stage(workdir, 'pretrain', synthetic_rows(), small_corpus_config(tmp_path))
  write_stage(workdir, 'sft', [{'step': 5, 'loss': 3.0, 'tokens_per_s': 500.0, 'mfu': 0.2}])
  (workdir / 'pipeline.json').write_text(json.dumps({
      'commit': 'abc123', 'config': {'report': {'eval_prompts': 7}},
      'stages': {'pretrain': {'status': 'done', 'wall_s': 42.5, 'summary': {}},
                 'sft': {'status': 'stopped', 'wall_s': 3.0, 'summary': {}}}}))
  results = {'pretrain': fake_model(100, 6.4321, -0.5), 'sft': fake_model(30, 5.4631, -0.25)}
  seen_configs = []

  def fake_evaluate(config, stage, stage_dir, cache_dir, log):
    seen_configs.append(config.report.eval_prompts)
    return results[stage]
  monkeypatch.setattr(model_evals, 'evaluate_model', fake_evaluate)
  monkeypatch.setattr(model_evals, 'pretrain_bits_per_byte', lambda *a: {
      'bits_per_byte': 3.1019, 'step': 100, 'tokens': 900, 'bytes': 2000})
  report = report_lib.build_report(str(workdir), log=lambda line: None)
  out = workdir / 'report'

  assert seen_configs == [7, 7]  # pipeline.json's report settings, when none are given
  for stage in ('reward', 'dpo', 'ppo'):
    assert report['stages'][stage]['status'] == 'not run'
  assert report['models']['dpo'] == {'status': 'not run'}
  assert report['stages']['pretrain']['wall_s'] == 42.5
  assert report['stages']['pretrain']['tokens_per_s'] == 1030.0  # median of the logged rows
  assert report['stages']['sft']['status'] == 'stopped' and report['commit'] == 'abc123'
  assert report['models']['pretrain']['chat_loss'] == 6.4321
  assert report['models']['sft']['reward_model_score'] is None  # no reward stage
  assert report['bits_per_byte']['xz']['bits_per_byte'] == pytest.approx(direct_xz_bits(
      b'alpha beta gamma\n\ndelta epsilon\n\n', b'alpha gamma\n\n'))
  assert report['prompts'][0]['answers']['sft']['greedy'] == 'greedy 30 <b>|x'
  assert json.loads((out / 'report.json').read_text())['models'] == json.loads(
      json.dumps(report['models']))

  md = (out / 'report.md').read_text()
  for text in ('6.432', '5.463', '0.125', '0.375', '0.625', '0.875', '0.812', '0.688',
               '0.062', '123.46', '3.102', '42 s', '1030', 'abc123', '0.500 / 0.750',
               'greedy 30 <b>\\|x', 'sampled 30\\x19'):
    assert text in md, text
  assert re.search(r'\| DPO \| not run \|', md) and re.search(r'\| reward model \| not run', md)

  page = (out / 'index.html').read_text()
  assert '6.432' in page and '42 s' in page and 'greedy 30 &lt;b&gt;|x' in page
  assert '\x19' not in page and 'not run' in page
  sources = re.findall(r'src="([^"]+)"', page)
  assert set(sources) == {'bits_per_byte.png', 'curves_pretrain.png', 'curves_sft.png'}
  for source in sources:
    data = (out / source).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
  assert not re.search(r'https?://|<link|<script', page)  # nothing fetched from elsewhere


def test_stage_without_checkpoint_is_an_error_row_not_a_crash(tmp_path):
  workdir = tmp_path / 'run'
  write_stage(workdir, 'sft', [{'step': 5, 'loss': 3.0}])
  report = report_lib.build_report(str(workdir), log=lambda line: None)
  assert report['stages']['sft']['status'] == 'no checkpoint'
  assert report['models']['sft']['status'] == 'error'
  assert 'no checkpoint' in report['models']['sft']['error']
  assert report['models']['pretrain'] == {'status': 'not run'}
  assert report['bits_per_byte'] == {'model': None, 'xz': None}
  assert report['commit'] != ''  # checkpoint metadata, git, or 'unknown'
  assert (tmp_path / 'run' / 'report' / 'curves_sft.png').stat().st_size > 0


def test_cache_names_follow_checkpoint_and_settings(tmp_path):
  settings = model_evals.settings_of(base.get_config())
  first = model_evals.cache_path(str(tmp_path), 'sft', 30, 'aaaa', settings)
  assert first == model_evals.cache_path(str(tmp_path), 'sft', 30, 'aaaa', dict(settings))
  assert first != model_evals.cache_path(str(tmp_path), 'sft', 30, 'bbbb', settings)
  assert first != model_evals.cache_path(str(tmp_path), 'sft', 40, 'aaaa', settings)
  assert first != model_evals.cache_path(str(tmp_path), 'sft', 30, 'aaaa',
                                         dict(settings, temperature=1.0))
  model_evals.save_cached(first, {'x': 1.5})
  assert collect.read_json(first) == {'x': 1.5}


def test_collect_reads_files_without_pipeline_json(tmp_path):
  write_stage(tmp_path, 'pretrain', synthetic_rows(),
              {'model': dict(base.get_config().model.to_dict(), vocab_size=256),
               'train': {'steps': 50}})
  checkpoint = tmp_path / 'pretrain' / 'checkpoints' / '50' / 'meta'
  checkpoint.mkdir(parents=True)
  (checkpoint / 'metadata').write_text(json.dumps({'git_commit': 'feed', 'wall_time': 1.0}))
  collected = collect.collect(str(tmp_path))
  pretrain = collected['stages']['pretrain']
  assert pretrain['status'] == 'done' and pretrain['latest_step'] == 50
  assert len(pretrain['metrics']) == 7  # the cut-short line is skipped
  assert pretrain['params'] > 0 and pretrain['checkpoint_bytes'] > 0
  assert collected['commit'] == 'feed' and collected['commit_source'] == 'checkpoint metadata'
  assert collected['stages']['ppo'] == {'status': 'not run'}


def test_cli_without_stage_folders_is_one_error_line(tmp_path):
  (tmp_path / 'notes.txt').write_text('nothing here')
  for workdir in (tmp_path, tmp_path / 'missing'):
    result = run_cli('report', f'--workdir={workdir}', timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:') and 'pipeline' in lines[0]
  assert sorted(os.listdir(tmp_path)) == ['notes.txt']  # nothing written


def test_reward_score_carries_its_standard_error_into_the_table():
  import math
  import statistics
  from evaluation.report import tables
  values = [0.3, -1.2, 0.8, 0.05, 2.0, -0.4]
  mean = sum(values) / len(values)
  by_hand = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
  assert abs(model_evals.stderr(values) - by_hand) < 1e-12
  assert abs(model_evals.stderr(values) - statistics.stdev(values) / math.sqrt(6)) < 1e-12
  assert model_evals.stderr([0.4]) == 0.0
  cell = tables.with_stderr(0.6061, 0.0849)
  assert cell == '0.606 ± 0.085' and render.is_number(cell)
  assert tables.with_stderr(None, 0.1) == '-' and tables.with_stderr(0.5, None) == '0.500'
  row = report_lib.model_row({'step': 3, 'chat': {
      'loss': 1.0, 'perplexity': 2.7, 'exact_match': 0.0, 'f1': 0.1, 'languages': {},
      'tasks': {}, 'language_ok_rate': 1.0, 'end_of_turn_rate': 1.0,
      'repeat_4gram_rate': 0.0, 'answers': []}}, {'mean': 0.6061, 'stderr': 0.0849})
  _, _, headers, rows = tables.model_table({'sft': row})
  assert rows[1][headers.index('reward-model score')] == '0.606 ± 0.085'


def test_paired_difference_matches_answers_by_prompt():
  import math
  import statistics
  from evaluation.report import tables
  prompts = [[{'role': 'user', 'content': f'q{i}'}] for i in range(5)]
  base = [(p, 'a') for p in prompts]
  base_scores = [0.1, 0.5, -0.2, 0.9, 0.3]
  # the other model answered in another order and one prompt more
  order = [3, 0, 4, 1, 2]
  other = [(prompts[i], 'b') for i in order] + [([{'role': 'user', 'content': 'new'}], 'b')]
  other_scores = [base_scores[i] + d for i, d in zip(order, [0.4, 0.2, 0.1, 0.3, 0.5])] + [9.0]
  got = model_evals.paired_difference(other, other_scores, base, base_scores)
  diffs = [0.4, 0.2, 0.1, 0.3, 0.5]
  assert got['n'] == 5
  assert abs(got['mean'] - 0.3) < 1e-12
  assert abs(got['stderr'] - statistics.stdev(diffs) / math.sqrt(5)) < 1e-12
  assert model_evals.paired_difference(other[5:], other_scores[5:], base, base_scores) is None
  cell = tables.signed_with_stderr(got)
  assert cell == '+0.300 ± 0.071' and render.is_number(cell)
  assert tables.signed_with_stderr(None) == '-'
