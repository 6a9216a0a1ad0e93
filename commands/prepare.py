"""`run.py prepare`: the text files → the TFDS dataset in WORKDIR/tfds/."""
from commands import common


def main(config, workdir):
  from data_pipeline import commands as data_commands
  from engine import distributed
  distributed.on_first_process(lambda: (data_commands.run_prepare(config, workdir),
                                        common.write_resolved_config(config, workdir)))
