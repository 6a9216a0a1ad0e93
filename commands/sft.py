"""`run.py sft`: supervised fine-tuning on chat data (full, LoRA or prompt tuning)."""
from absl import flags

from commands import common

RESUME = common.resume_flag()
VERIFY_RESUME = flags.DEFINE_bool('verify_resume', False, 'Train, restart halfway in a fresh '
                                  'process, and check the result is bitwise equal.')
INIT_FROM = common.define('string', 'init_from', None, 'The workdir (its latest checkpoint) or '
                          'checkpoint step directory to start from.')


def main(config, workdir):
  if VERIFY_RESUME.value:
    import sys
    from engine import verify_resume
    if not verify_resume.verify(config, workdir, sys.argv[2:], command='sft'):
      sys.exit(1)
    return
  from posttrain import sft
  sft.run_sft(config, workdir, INIT_FROM(), resume=RESUME(),
              on_ready=common.on_ready(config, workdir))
