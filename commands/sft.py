"""`run.py sft`: supervised fine-tuning on chat data (full, LoRA or prompt tuning)."""
from absl import flags

from commands import common

RESUME = common.resume_flag()
INIT_FROM = flags.DEFINE_string('init_from', None, 'The workdir (its latest checkpoint) or '
                                'checkpoint step directory to start from.')


def main(config, workdir):
  from posttrain import sft
  sft.run_sft(config, workdir, INIT_FROM.value, resume=RESUME(),
              on_ready=common.on_ready(config, workdir))
