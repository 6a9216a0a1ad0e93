"""SFT of the `tiny` model on the embedded instruction set (minutes on a CPU).

`python run.py sft --config=configs/sft_tiny.py --workdir=runs/sft --init_from=runs/tiny`
The same config `run.py pipeline --config=configs/tiny.py` gives this stage.
"""
from configs import stages
from configs import tiny


def get_config():
  return stages.for_stage(tiny.get_config(), 'sft')
