"""DPO of the `tiny` SFT model on the embedded preference pairs.

`python run.py dpo --config=configs/dpo_tiny.py --workdir=runs/dpo --init_from=runs/sft`
The same config `run.py pipeline --config=configs/tiny.py` gives this stage.
"""
from configs import stages
from configs import tiny


def get_config():
  return stages.for_stage(tiny.get_config(), 'dpo')
