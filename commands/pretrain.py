"""`run.py pretrain`: next-token pretraining (resumes from the latest checkpoint)."""
import sys

from absl import flags

from commands import common

RESUME = common.resume_flag()
VERIFY_RESUME = flags.DEFINE_bool('verify_resume', False, 'Train, restart halfway in a fresh '
                                  'process, and check the result is bitwise equal.')


def main(config, workdir):
  if VERIFY_RESUME.value:
    from engine import verify_resume
    if not verify_resume.verify(config, workdir, sys.argv[2:]):
      sys.exit(1)
    return
  from pretrain import trainer
  if RESUME():  # before the data: another stage's workdir must not read as a missing dataset
    from engine import checkpointing
    checkpointing.check_workdir_stage(workdir, 'pretrain')
  trainer.run_pretrain(config, workdir, resume=RESUME(),
                       on_ready=common.on_ready(config, workdir))
