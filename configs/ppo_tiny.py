"""PPO of the `tiny` SFT model against the tiny reward model (CPU, minutes).

`python run.py ppo --config=configs/ppo_tiny.py --workdir=runs/ppo --init_from=runs/sft --reward_from=runs/reward`
The same config `run.py pipeline --config=configs/tiny.py` gives this stage.
"""
from configs import stages
from configs import tiny


def get_config():
  return stages.for_stage(tiny.get_config(), 'ppo')
