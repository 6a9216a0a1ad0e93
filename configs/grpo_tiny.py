"""GRPO of the `tiny` SFT model with the default verifiable rewards (CPU, about a minute).

`python run.py grpo --config=configs/grpo_tiny.py --workdir=runs/grpo --init_from=runs/sft`
The same config `run.py pipeline --config=configs/tiny.py` gives this stage.
"""
from configs import stages
from configs import tiny


def get_config():
  return stages.for_stage(tiny.get_config(), 'grpo')
