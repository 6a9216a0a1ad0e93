"""Reward model on the `tiny` SFT model and the embedded preference pairs.

`python run.py reward --config=configs/reward_tiny.py --workdir=runs/reward --init_from=runs/sft`
The same config `run.py pipeline --config=configs/tiny.py` gives this stage.
"""
from configs import stages
from configs import tiny


def get_config():
  return stages.for_stage(tiny.get_config(), 'reward')
