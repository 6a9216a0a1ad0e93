"""The cut-down tiny pipeline the pipeline tests share (one run for the whole session)."""
import signal
import subprocess
import time

from tests.cli_helpers import run_cli, start_cli, tree_hashes

CUT_DOWN = [
    '--config=configs/tiny.py',
    '--config.train.steps=30', '--config.train.eval_every=15', '--config.train.eval_batches=2',
    '--config.pipeline.sft.train.steps=40', '--config.pipeline.sft.checkpoint.save_every_steps=4',
    '--config.pipeline.sft.train.eval_every=20', '--config.pipeline.sft.train.eval_batches=2',
    '--config.pipeline.reward.train.steps=10', '--config.pipeline.reward.train.eval_batches=2',
    '--config.pipeline.dpo.train.steps=8', '--config.pipeline.dpo.train.eval_batches=2',
    '--config.pipeline.ppo.train.steps=3', '--config.pipeline.ppo.train.batch_size=8',
    '--config.ppo.minibatches=2', '--config.sft.eval_prompts=8', '--config.report.eval_prompts=8',
    '--config.pipeline.grpo.train.steps=3', '--config.pipeline.grpo.train.batch_size=16',
    '--config.grpo.num_generations=4', '--config.grpo.max_completion_length=8',
]
TRAINED = {'pretrain': 30, 'sft': 40, 'reward': 10, 'ppo': 3, 'dpo': 8, 'grpo': 3}


def pipeline_lines(text):
  return [l for l in text.replace('\r', '\n').splitlines() if l.startswith('pipeline: ')]


def run_finished_pipeline(tmp_path_factory):
  """Runs the pipeline, stops it with SIGTERM once SFT has saved a checkpoint, and runs
  it again to the end. Returns (workdir, first run's output, second run's output,
  pretrain's files after the first run)."""
  workdir = tmp_path_factory.mktemp('pipeline') / 'run'
  first = start_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}', stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True)
  saved = workdir / 'sft' / 'checkpoints' / '4'
  deadline = time.time() + 600
  while not saved.is_dir() and first.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  first.send_signal(signal.SIGTERM)
  out1, _ = first.communicate(timeout=300)
  assert first.returncode == 0, out1[-3000:]
  pretrain_files = tree_hashes(workdir / 'pretrain')
  second = run_cli('pipeline', *CUT_DOWN, f'--workdir={workdir}', timeout=1200)
  assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
  return workdir, out1, second.stdout + second.stderr, pretrain_files


