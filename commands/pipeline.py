"""`run.py pipeline`: tokenizer → prepare → pretrain in one workdir."""
from commands import common

RESUME = common.resume_flag()

def main(config, workdir):
  from data_pipeline import commands as data_commands
  from engine import distributed
  from pretrain import trainer
  distributed.on_first_process(lambda: (data_commands.run_tokenizer(config, workdir),
                                        data_commands.run_prepare(config, workdir)))
  trainer.run_pretrain(config, workdir, resume=RESUME(),
                       on_ready=common.on_ready(config, workdir))
