"""`run.py tokenizer`: trains the SentencePiece model into WORKDIR/tokenizer/."""
from absl import flags

from commands import common

OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Retrain an existing tokenizer.')


def main(config, workdir):
  from data_pipeline import commands as data_commands
  from engine import distributed
  distributed.on_first_process(lambda: (
      data_commands.run_tokenizer(config, workdir, overwrite=OVERWRITE.value),
      common.write_resolved_config(config, workdir)))
