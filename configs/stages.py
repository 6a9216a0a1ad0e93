"""A post-training stage's config: the pipeline config with that stage's own keys.

The top-level train.*, checkpoint.* and data.seq_len are pretraining's; `pipeline.<stage>`
holds what differs for `sft`, `reward`, `dpo`, `ppo` and `grpo`. `run.py pipeline` builds each
stage's config here, and the stage presets (configs/sft_tiny.py, ...) are the same call,
so a stage run alone and inside the pipeline train identically.
"""
import copy

STAGES = ('sft', 'reward', 'dpo', 'ppo', 'grpo')


def for_stage(config, stage):
  """A copy of `config` with `config.pipeline.<stage>` written over it; pretraining (and
  any other name) gets a plain copy."""
  staged = copy.deepcopy(config)  # keeps references: tokenizer.vocab_size still moves the model's
  if stage not in STAGES:
    return staged
  for section, values in config.pipeline[stage].items():
    for key, value in values.items():
      staged[section][key] = value
  return staged
