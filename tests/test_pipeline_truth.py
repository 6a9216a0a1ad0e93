"""The pipeline's record says what happened, and signals stop any moment cleanly
(issue 26 classes 3, 5, 8): SIGTERM while the report evaluates or draws exits 0
with one line (a normal exit there ended in a segmentation fault); a start that
fails leaves pipeline.json and the workdir as they were; a stage folder trained
elsewhere is continued only with its own settings; keys a stage never reads, and
stages a run does not use, never block it."""
import json
import shutil
import signal
import subprocess
import time

import pytest

from tests.cli_helpers import run_cli, start_cli, tree_hashes
from tests.pipeline_helpers import CUT_DOWN

pytestmark = pytest.mark.slow


def _sigterm_after(line_fragment, delay, *args):
  """Starts run.py with `args`, waits for a stdout line holding `line_fragment`, sends
  SIGTERM `delay` s later; returns (exit code, stdout, stderr)."""
  proc = start_cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if line_fragment in line:
      break
  time.sleep(delay)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, ''.join(seen) + out, err


def _uncached_copy(finished, tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(finished[0], workdir, ignore=shutil.ignore_patterns('report'))
  return workdir


@pytest.mark.parametrize('delay', [0.0, 3.0])
def test_sigterm_during_the_pipelines_report_exits_0_with_its_line(finished, tmp_path, delay):
  workdir = _uncached_copy(finished, tmp_path)
  code, out, err = _sigterm_after('report: evaluating', delay, 'pipeline', *CUT_DOWN,
                                  f'--workdir={workdir}', '--stages=report')
  assert code == 0, (code, out[-2000:], err[-3000:])
  assert 'Fatal Python error' not in err and 'Traceback' not in err, err[-3000:]
  stopped = [l for l in out.splitlines() if 'SIGTERM received in report' in l]
  done = [l for l in out.splitlines() if l.startswith('pipeline: report done')]
  assert len(stopped) + len(done) == 1, out[-2000:]
  status = json.load(open(workdir / 'pipeline.json'))['stages']['report']['status']
  assert status == ('stopped' if stopped else 'done')


@pytest.mark.parametrize('delay', [1.5])
def test_sigterm_during_the_standalone_report_exits_0_with_its_line(finished, tmp_path, delay):
  workdir = _uncached_copy(finished, tmp_path)
  code, out, err = _sigterm_after('report: evaluating', delay, 'report',
                                  f'--workdir={workdir}')
  assert code == 0, (code, out[-2000:], err[-3000:])
  assert 'Fatal Python error' not in err and 'Traceback' not in err, err[-3000:]
  last = out.strip().splitlines()[-1]
  stopped = last.startswith('report: SIGTERM received; stopped: the evaluations finished')
  assert stopped or (last.startswith('report: ') and 'index.html (built in' in last), last
  # What it evaluated before the signal is kept; a second run finishes the card.
  again = run_cli('report', f'--workdir={workdir}', timeout=600)
  assert again.returncode == 0 and (workdir / 'report' / 'index.html').is_file(), again.stderr


def test_a_start_that_fails_leaves_no_record_and_no_workdir(finished, tmp_path):
  workdir = tmp_path / 'fresh'
  # Inside the stage (its data), after the plan was made: before the change nothing undid
  # the record's "running".
  result = run_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}',
                   f'--init_from={finished[0] / "pretrain"}', '--stages=sft',
                   f'--config.data.train_files=("{tmp_path / "missing.jsonl"}",)')
  assert result.returncode == 2, result.stderr[-2000:]
  assert len([l for l in result.stderr.splitlines() if l.strip()]) == 1, result.stderr
  assert not workdir.exists()
  result = run_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}', '--stages=report')
  assert result.returncode == 2 and 'holds no stage folder' in result.stderr, result.stderr
  assert not workdir.exists()


def test_a_stage_folder_trained_by_its_command_is_continued_only_with_its_settings(
    finished, tmp_path):
  workdir = tmp_path / 'adopt'
  pretrained = finished[0] / 'pretrain'
  alone = run_cli('sft', '--config=configs/tiny.py', f'--workdir={workdir / "sft"}',
                  f'--init_from={pretrained}', '--config.train.steps=2',
                  '--config.train.eval_batches=1', '--config.sft.eval_prompts=2')
  assert alone.returncode == 0, alone.stderr[-2000:]
  before = tree_hashes(workdir)
  result = run_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}', f'--init_from={pretrained}',
                   '--stages=sft')
  assert result.returncode == 2, result.stderr[-2000:]
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith('error: ') and 'trained with other settings' in line, line
  # `run.py sft --config=configs/tiny.py` trains with tiny's own train.* (Muon, 4e-3), the
  # pipeline's SFT with pipeline.sft's (AdamW, 1e-3, 40 steps): the first three named.
  assert "train.optimizer 'muon' -> 'adamw'" in line and 'and 1 more' in line, line
  assert tree_hashes(workdir) == before


def test_unread_keys_and_unused_stages_do_not_block(finished):
  workdir = finished[0]
  before = tree_hashes(workdir)
  # The adapters' rank under full fine-tuning changes nothing: still done, nothing written.
  result = run_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}', '--stages=sft,reward',
                   '--config.sft.lora_rank=4')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'pipeline: sft already done' in result.stdout
  # A changed (or invalid) key of the reward stage does not block a run of SFT alone ...
  for key in ('--config.reward.center_coef=0.5', '--config.pipeline.reward.train.steps=-1'):
    result = run_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}', '--stages=sft', key)
    assert result.returncode == 0, (key, result.stderr[-2000:])
  assert tree_hashes(workdir) == before  # skipped stages rewrite nothing, the record included
  # ... but it does block PPO, which starts from the reward model.
  result = run_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}', '--stages=ppo',
                   '--config.reward.center_coef=0.5')
  assert result.returncode == 2 and 'reward.center_coef 0.01 -> 0.5' in result.stderr, \
      result.stderr[-2000:]
  assert tree_hashes(workdir) == before
