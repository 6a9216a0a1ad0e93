"""A model small enough for tests and a CPU demo in minutes (~0.9M params).

`run.py pipeline --config=configs/tiny.py` trains it through every stage; the
post-training stages' own step counts and rates are `pipeline.<stage>` in configs/base.py.
"""
from configs import base


def get_config():
  config = base.get_config()
  config.tokenizer.vocab_size = 2048  # model.vocab_size follows
  config.model.num_layers = 2
  config.model.d_model = 128
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.mlp_dim = 384
  config.model.max_seq_len = 256
  config.model.attention_block = 32  # 1.5-3% more tokens/s than 64 at seq 128
  config.data.seq_len = 128
  # The quick start's pretraining recipe, the best of bench/speedrun_sweep.py's sweep
  # within the old recipe's time (AdamW at 3e-3: 2.15-2.16 bits/byte in two seeds, at
  # 2e-3: 2.12-2.13; xz -9e 2.24): Muon on the hidden kernels reaches 2.037/2.041.
  # Its update costs ~5% of the step (2 Newton-Schulz iterations), so 1,400 steps.
  config.train.steps = 1400
  config.train.optimizer = 'muon'
  config.train.muon_learning_rate = 8e-3  # 6e-3: 2.040/2.050 in two seeds (bench/README.md)
  # AOL rescaling lets 2 iterations do what 3 did (2.040 against 2.038; plain 2: 2.063).
  config.train.muon_ns_steps = 2
  config.train.muon_preconditioning = 'aol'
  config.train.warmup_steps = 20
  config.train.weight_decay = 0.0  # Muon's decay is scaled by its tiny rate; no measurable use
  config.train.batch_size = 16
  # Four microbatches of 4 rows: on a 2-core CPU the step runs 1.3-1.5x faster than one
  # 16-row pass, whose activations and 2,048-wide logits do not stay in cache (the same
  # update up to summation order; bench/microbatch_timing.py). SFT, reward and DPO
  # likewise; PPO has its own ppo.minibatches.
  config.train.microbatches = 4
  # AdamW's rate, for the embedding, output head and norms (Muon owns the rest); with
  # Muon at 5e-3, 2e-3 gave 2.066, 4e-3 2.051 and 6e-3 2.050.
  config.train.learning_rate = 4e-3
  config.train.eval_every = 500
  config.checkpoint.save_every_steps = 500
  for stage in ('sft', 'reward', 'dpo'):
    config.pipeline[stage].train.microbatches = 4
  config.reward.center_coef = 0.01  # TRL's value; keeps the tiny reward model's scores near 0
  config.ppo.max_new_tokens = 32  # prompts get the other 96 tokens of pipeline.ppo's 128
  config.ppo.missing_eot_penalty = 1.0  # the tiny SFT model forgets to stop; make it pay
  config.ppo.repeat_penalty = 0.5
  # GRPO on the tiny SFT model: samples nearer its greedy answers (what the report scores)
  # and a KL anchor; without it (β = 0) held-out F1 rose by 1 SE only, the rest forgotten.
  config.grpo.temperature = 0.7
  config.grpo.beta = 0.04
  return config
