"""Every configuration knob with its default. Presets and stage configs start here.

Override any key on the command line: `--config.train.steps=100`.
Tuples take repeated flags or a literal: `--config.data.train_files='(a.txt, b.jsonl)'`.
"""
import ml_collections


def _stage(*, steps, batch_size, learning_rate, warmup_steps, weight_decay, eval_every,
           eval_batches, save_every_steps, seq_len, log_every=10, microbatches=1):
  """A post-training stage's own training keys (they replace train.*, checkpoint.*,
  data.seq_len of the pretraining config when that stage runs). Every stage fine-tunes
  with AdamW, whichever optimizer pretrained the model."""
  return ml_collections.ConfigDict({
      'train': {'optimizer': 'adamw', 'steps': steps, 'batch_size': batch_size,
                'learning_rate': learning_rate, 'warmup_steps': warmup_steps, 'weight_decay': weight_decay,
                'eval_every': eval_every, 'eval_batches': eval_batches, 'log_every': log_every,
                'microbatches': microbatches},
      'checkpoint': {'save_every_steps': save_every_steps},
      'data': {'seq_len': seq_len}})


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0  # the root of every random key (init, dropout-free sampling, data order)

  config.data = data = ml_collections.ConfigDict()
  data.train_files = ()  # text/JSONL/Parquet (.gz/.zst/.bz2/.xz), dirs, globs; ()=embedded
  data.eval_files = ()  # held-out files; empty = embedded corpus's validation split
  data.text_format = 'auto'  # 'auto' (by extension), 'text' or 'jsonl'
  data.text_field = 'text'  # JSONL key / Parquet column (and TFDS feature) of the text
  data.text_split = 'blank_line'  # text files: 'blank_line' blocks or one 'file' per document
  data.prepare_workers = 0  # `prepare` processes; 0 = one per core (same dataset for any)
  data.prepare_shard_mb = 128.0  # input MB per `prepare` work unit and array_record shard
  data.tfds_name = ''  # read an existing TFDS dataset instead of files (with tfds_data_dir)
  data.tfds_data_dir = ''  # where tfds_name lives; '' = WORKDIR/tfds for `prepare` output
  data.train_split = 'train'  # TFDS split used for training
  data.eval_split = 'validation'  # TFDS split used for evaluation
  data.seq_len = 256  # tokens per packed training row
  data.add_bos = True  # prefix each document with BOS (EOS always ends it)
  data.num_shards = 0  # independent data streams; 0 = one per process (set it to keep
  #                       the exact data order when the process count changes)
  data.num_threads = 2  # Grain reader threads (reading and tokenisation run there)
  data.prefetch = 8  # Grain prefetch buffer, in elements (pretraining: chunks of 64 documents)
  data.chat_format = 'auto'  # chat JSONL: 'auto' (per file), 'messages', 'prompt_completion', 'alpaca'

  config.tokenizer = tok = ml_collections.ConfigDict()
  tok.vocab_size = 8192  # SentencePiece pieces, specials and 256 byte pieces included
  tok.model_type = 'bpe'  # 'bpe' or 'unigram'
  tok.character_coverage = 0.0  # 0 = auto: <= half the vocab for single characters, rest bytes
  tok.normalization = 'identity'  # 'identity' keeps decode(encode(s)) == s; or 'nfkc'
  tok.max_sentences = 2_000_000  # lines sampled for training the tokenizer
  tok.path = ''  # use this trained .model instead of WORKDIR/tokenizer/

  config.model = model = ml_collections.ConfigDict()
  model.num_layers = 6  # decoder blocks
  model.d_model = 384  # residual width
  model.num_heads = 6  # query heads
  model.num_kv_heads = 6  # key/value heads (grouped-query attention when fewer)
  model.head_dim = 0  # 0 = d_model // num_heads
  model.mlp_dim = 1024  # SwiGLU hidden width
  # One knob: model.vocab_size is tokenizer.vocab_size (a reference); setting either sets both.
  model.vocab_size = tok.get_ref('vocab_size')
  model.max_seq_len = 1024  # longest context the model accepts
  model.tie_embeddings = False  # share the token embedding with the LM head
  model.rope_theta = 10000.0  # rotary embedding base
  model.norm_eps = 1e-5  # RMSNorm epsilon
  model.init_std = 0.02  # normal init scale; output projections are scaled by depth
  model.dtype = 'auto'  # compute dtype; 'auto' = float32 on CPU, bfloat16 on GPU/TPU
  model.param_dtype = 'float32'  # parameters and optimizer state stay float32
  model.attention = 'auto'  # 'auto' (CPU blocked, GPU cudnn, TPU splash); or one of those, xla, reference
  model.attention_block = 64  # query block size of the blocked attention (64 measured best)
  model.remat = 'none'  # per-block rematerialisation: 'none', 'full', 'dots'

  config.train = train = ml_collections.ConfigDict()
  train.steps = 2000  # optimizer updates
  train.stop_after = 0  # exit after this step with a checkpoint (time-limited jobs); 0 = off
  train.batch_size = 16  # global batch, in packed rows
  train.microbatches = 1  # gradient accumulation: batch_size is split into this many
  train.optimizer = 'adamw'  # or 'muon': Muon on hidden kernels, AdamW on the rest
  train.learning_rate = 1e-3  # peak learning rate (AdamW's; with muon, for the rest)
  train.muon_learning_rate = 0.02  # Muon's peak rate for hidden kernels
  train.muon_beta = 0.95  # Muon's momentum
  train.muon_ns_steps = 5  # Newton-Schulz iterations per update
  train.muon_preconditioning = 'frobenius'  # before them: 'frobenius' or 'aol' (one step fewer)
  train.warmup_steps = 100  # linear warmup from 0 to the peak
  train.min_lr_ratio = 0.1  # cosine decays to peak * this at the last step
  train.weight_decay = 0.1  # AdamW decay; never applied to norms and biases
  train.b1 = 0.9  # AdamW beta1
  train.b2 = 0.95  # AdamW beta2
  train.eps = 1e-8  # AdamW epsilon
  train.grad_clip = 1.0  # global-norm clip; 0 disables
  train.z_loss = 0.0  # weight of log(Z)^2; 1e-4 stabilises large runs
  train.log_every = 10  # steps between metric lines
  train.eval_every = 200  # steps between validation evaluations; 0 = only at the end
  train.eval_batches = 8  # validation batches per evaluation
  train.peak_tflops = 0.0  # per-device peak for MFU; 0 = measure a matmul at start

  config.checkpoint = ckpt = ml_collections.ConfigDict()
  ckpt.save_every_steps = 500  # 0 disables step-based saving
  ckpt.save_every_minutes = 0.0  # 0 disables time-based saving
  ckpt.keep = 3  # most recent checkpoints kept
  ckpt.keep_period = 0  # also keep every step divisible by this forever; 0 = none
  ckpt.async_save = True  # write in the background while training continues
  ckpt.timeout_s = 600  # longest wait on checkpoint storage (async write, final wait); then one error line

  config.sft = sft = ml_collections.ConfigDict()
  sft.method = 'full'  # 'full' (every weight), 'lora' (low-rank adapters), 'prompt' (soft prompt)
  sft.lora_rank = 8  # adapter rank r
  sft.lora_alpha = 16.0  # adapter scale is alpha / rank (as PEFT)
  sft.lora_targets = ('wq', 'wk', 'wv', 'wo', 'w_gate', 'w_up', 'w_down')  # adapted weights
  sft.num_virtual_tokens = 16  # prompt tuning: learned embeddings before every example
  sft.prompt_reparam_hidden = 0  # P-tuning: MLP width reparameterising the prompt; 0 = off
  sft.truncation = 'truncate'  # longer than seq_len: 'truncate' (keep the start) or 'drop'
  sft.eval_prompts = 64  # eval: held-out prompts answered greedily for the task metrics
  sft.max_new_tokens = 64  # eval: longest greedy answer to a held-out prompt

  config.reward = reward = ml_collections.ConfigDict()
  reward.method = 'full'  # 'full' or 'lora' (rank, alpha, targets from sft.lora_*)
  reward.center_coef = 0.0  # + coef·(r_chosen + r_rejected)² keeps scores near 0 (TRL: 0.01)
  reward.use_margin = True  # subtract a pair's "margin" inside the sigmoid (Llama 2)

  config.dpo = dpo = ml_collections.ConfigDict()
  dpo.method = 'full'  # 'full' (reference = a frozen copy) or 'lora' (reference = base)
  dpo.beta = 0.1  # strength of the KL anchor to the reference (DPO paper, TRL default)
  dpo.loss_type = 'sigmoid'  # 'sigmoid' (DPO) or 'ipo'
  dpo.label_smoothing = 0.0  # conservative DPO: assumed rate of flipped labels (sigmoid)

  # PPO defaults follow TRL's PPOConfig / OpenRLHF where they agree (noted where not).
  config.ppo = ppo = ml_collections.ConfigDict()
  ppo.method = 'full'  # actor: 'full' or 'lora' (sft.lora_* settings; reference = base)
  ppo.critic_init = 'reward'  # critic = reward model + its head ('reward') or SFT + zero head
  ppo.critic_learning_rate = 0.0  # 0 = train.learning_rate
  ppo.max_new_tokens = 48  # longest sampled answer; prompts get data.seq_len minus this
  ppo.temperature = 1.0  # rollout temperature; log-probs, KL and entropy use logits / it (TRL)
  ppo.top_p = 1.0  # rollout nucleus sampling; 1 = off (log-probs ignore the cut: < 1 is off-policy)
  ppo.epochs = 4  # passes over each rollout batch (TRL num_ppo_epochs)
  ppo.minibatches = 4  # updates per pass (must divide train.batch_size)
  ppo.clip = 0.2  # policy ratio clip ε (PPO paper, TRL cliprange)
  ppo.value_clip = 0.2  # value clip around the rollout's values (TRL cliprange_value)
  ppo.vf_coef = 0.1  # weight of the value loss (TRL vf_coef)
  ppo.entropy_coef = 0.0  # entropy bonus; 0 = off (TRL has none)
  ppo.gamma = 1.0  # discount over response tokens (TRL)
  ppo.lam = 0.95  # GAE λ (TRL)
  ppo.kl_coef = 0.05  # per-token KL penalty β (TRL kl_coef)
  ppo.kl_estimator = 'k1'  # 'k1' (log π − log ref) or 'k3' (non-negative, lower variance)
  ppo.adaptive_kl = False  # Ziegler et al. 2019 controller toward target_kl
  ppo.target_kl = 6.0  # adaptive controller's target KL per sequence (Ziegler et al.)
  ppo.kl_horizon = 10000  # adaptive controller's horizon, in rollout samples (Ziegler et al.)
  ppo.whiten_rewards = False  # whiten token rewards before GAE (TRL whiten_rewards)
  ppo.missing_eot_penalty = 0.0  # subtracted from the score of an answer without end-of-turn
  ppo.repeat_penalty = 0.0  # subtracted from the score of an answer with a repeated 4-gram
  ppo.wrong_language_penalty = 0.0  # subtracted when the answer's language is not the prompt's

  # GRPO with verifiable rewards; names and defaults follow TRL's GRPOConfig (noted where not).
  config.grpo = grpo = ml_collections.ConfigDict()
  grpo.method = 'full'  # policy: 'full' or 'lora' (sft.lora_* settings; reference = base)
  grpo.rewards = 'f1:1,end_of_turn:0.2'  # name:weight,...: built-ins, reward_model, module:function
  grpo.reward_aggregation = 'sum_then_normalize'  # or 'normalize_then_sum' (TRL multi_objective_aggregation)
  grpo.num_generations = 8  # G answers per prompt; must divide train.batch_size (answers per step)
  grpo.temperature = 1.0  # rollout temperature; log-probs use logits / it (TRL)
  grpo.top_p = 1.0  # rollout nucleus sampling; 1 = off (log-probs ignore the cut)
  grpo.max_completion_length = 32  # longest sampled answer; prompts get data.seq_len minus this
  grpo.scale_rewards = 'group'  # advantage divided by the group's std, the batch's, or 'none' (Dr. GRPO)
  grpo.loss_type = 'dapo'  # 'grpo', 'dr_grpo', 'dapo' or 'bnpo' (TRL's default is dapo)
  grpo.epsilon = 0.2  # lower ratio clip (TRL epsilon)
  grpo.epsilon_high = 0.0  # upper ratio clip (DAPO clip-higher, e.g. 0.28); 0 = epsilon
  grpo.beta = 0.0  # KL (k3) to the frozen reference; 0 = no reference is built (TRL's default)
  grpo.num_iterations = 1  # μ: updates per generation batch; π_old = the sampling policy
  grpo.mask_truncated_completions = False  # answers cut at max_completion_length get no loss
  grpo.drop_zero_std_groups = False  # dynamic sampling: resample groups whose rewards are all equal
  grpo.max_resample_rounds = 2  # dynamic sampling: fresh prompt batches tried per step at most

  # `run.py pipeline`: the top-level train/data/checkpoint keys are pretraining's; each
  # post-training stage replaces the keys below with its own (configs/stages.py). Defaults
  # were tuned on the `tiny` preset (README's pipeline); scale them with the model.
  config.pipeline = pipe = ml_collections.ConfigDict()
  pipe.sft = _stage(steps=300, batch_size=16, learning_rate=1e-3, warmup_steps=20,
                    weight_decay=0.0, eval_every=100, eval_batches=8, save_every_steps=100,
                    seq_len=256)  # seq_len 256: ~95% of the embedded conversations fit
  pipe.reward = _stage(steps=300, batch_size=16, learning_rate=1e-3, warmup_steps=20,
                       weight_decay=0.0, eval_every=100, eval_batches=16, save_every_steps=100,
                       seq_len=256)  # batch in pairs (two sequences each)
  pipe.dpo = _stage(steps=200, batch_size=16, learning_rate=3e-4, warmup_steps=20,
                    weight_decay=0.0, eval_every=100, eval_batches=16, save_every_steps=100,
                    seq_len=256)  # batch in pairs
  pipe.ppo = _stage(steps=40, batch_size=16, learning_rate=1e-4, warmup_steps=0,
                    weight_decay=0.0, eval_every=0, eval_batches=8, save_every_steps=10,
                    seq_len=128, log_every=1)  # steps = iterations, batch = prompts each

  # GRPO: 16 prompts × 8 answers a step. Tuned on tiny (README): 64 answers a step at
  # lr 3e-4, or lr 5e-4 for 80 steps, did not raise held-out F1 (5e-4 lowered it).
  pipe.grpo = _stage(steps=60, batch_size=128, learning_rate=2e-4, warmup_steps=0,
                     weight_decay=0.0, eval_every=0, eval_batches=8, save_every_steps=20,
                     seq_len=128, log_every=1)  # batch = answers (prompts × num_generations)

  # `run.py report` (and the pipeline's last step): the evaluations behind the report card.
  config.report = report = ml_collections.ConfigDict()
  # Held-out prompts each model answers greedily (task table, reward-model score). 192
  # (~15 per task): with 48 the score's standard error (~0.1) hid the models' differences.
  report.eval_prompts = 192
  report.max_new_tokens = 48  # longest answer, to held-out and to fixed prompts
  report.prompts = (  # fixed prompts every model answers, side by side (zh and en)
      '你好，请介绍一下你自己。', 'What is your favorite book?',
      '李白《静夜思》中“床前明月光”的下一句是什么？', '成语“画蛇添足”是什么意思？',
      'Give a short definition of the noun "river".',
      'Who said this? "Art is a jealous mistress."')
  report.temperature = 0.8  # the sampled answers to the fixed prompts (greedy ones beside them)
  report.seed = 0  # key of those samples: the same for every model, so reruns match
  report.bpb_batches = 0  # pretrained model's bits per byte: validation batches of 16 (0 = all)
  report.xz_train_mib = 64  # xz baseline: tail of the training text kept (xz's dictionary size)

  config.hf = hf = ml_collections.ConfigDict()
  hf.parity_tolerance = 1e-3  # export/import fail above this max |logit difference|
  hf.parity_sequences = 4  # random token sequences the parity check runs
  hf.shard_mb = 2000  # largest safetensors shard written by export, in MiB

  # `run.py serve` / `run.py chat`: the continuous-batching engine (serving/engine.py).
  config.serve = serve = ml_collections.ConfigDict()
  serve.max_batch = 16  # decode slots: requests generated together in one jitted step
  serve.min_bucket = 16  # smallest prefill length bucket (then powers of two up to the context)
  serve.max_queue = 256  # requests waiting for a slot; beyond this a request gets HTTP 503
  serve.default_max_tokens = 256  # chat answers without max_tokens (capped by the context)
  serve.max_n = 16  # most choices (n) one request may ask for

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # data-parallel ways; -1 = all devices left over
  mesh.fsdp = 1  # parameter-sharding ways (ZeRO-3 style)
  mesh.tensor = 1  # tensor-parallel ways (heads and MLP split)
  return config
