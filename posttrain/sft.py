"""`run.py sft`: supervised fine-tuning on chat data, on the shared engine.

Starts from `--init_from` (params restored, fresh optimizer state). The loss is
next-token cross-entropy on assistant tokens only (their end-of-turn included).
`sft.method` picks what trains:
- `full`: every weight;
- `lora`: low-rank adapters on the block's linear layers; the base is frozen
  and merged as W + (alpha/rank)·A·B inside the jitted step;
- `prompt`: N virtual-token embeddings before every example (P-tuning when
  `sft.prompt_reparam_hidden` > 0); the model is frozen.
Evaluation during training: assistant-token loss on the held-out chat split and
the pretraining validation perplexity (what fine-tuning cost).
"""
import math
import os

import jax
from jax.sharding import NamedSharding, PartitionSpec

from data_pipeline import chat_formats
from data_pipeline import embedded
from data_pipeline import sft_loader
from data_pipeline import tfds_corpus
from data_pipeline.global_batch import process_row_block
from engine import checkpointing
from engine import flops
from engine import lm_loss
from engine import optimizer
from engine import train_step
from engine import paths
from engine.stage import Stage
from evaluation import chat_loss
from evaluation import lm_validation
from model import soft_prompt
from posttrain.run_stage import run_stage
from posttrain.trainable import Trainable
from posttrain.trainable import base_meta
from posttrain.trainable import check_resume
from posttrain.trainable import pretrain_workdir
from posttrain.trainable import start_model


def load_examples(config, tokenizer, files, what, num_virtual):
  records = chat_formats.read_chat_files(files, config.data.chat_format)
  examples, stats = sft_loader.tokenize_conversations(
      records, tokenizer, config.data.seq_len, num_virtual, config.sft.truncation)
  sft_loader.check_not_empty(examples, stats, what)
  return examples, stats


class SftStage(Stage):
  name = 'sft'

  def __init__(self, config, workdir, init_from):
    self.config, self.workdir = config, workdir
    self.method, sft = config.sft.method, config.sft
    self.init, self.mesh, self.spec, base_params = start_model(config, workdir, init_from, 'sft')
    init = self.init
    self.tokenizer = tokenizer = init.tokenizer
    num_virtual = sft.num_virtual_tokens if self.method == 'prompt' else 0
    train_files = embedded.chat_train_files(config)
    self.train_examples, self.train_stats = load_examples(
        config, tokenizer, train_files, 'the training chat files', num_virtual)
    self.eval_examples, self.eval_stats = load_examples(
        config, tokenizer, embedded.chat_eval_files(config), 'the held-out chat files',
        num_virtual)
    self.tx = optimizer.make_optimizer(config.train)
    self.schedule = optimizer.learning_rate_schedule(config.train)
    self._setup_method(base_params)
    row_block, num_blocks = process_row_block(self.mesh, config.train.batch_size)
    self.data_iter = sft_loader.train_dataset(config, self.train_examples, row_block, num_blocks)
    self.meta = dict(checkpointing.metadata(config, tokenizer, self.mesh), stage='sft',
                     method=self.method, base=base_meta(init),
                     data={'train_files': list(train_files), **self.train_stats},
                     pretrain_workdir=pretrain_workdir(self.init))
    if self.method == 'lora':
      self.meta.update(self.trainable.meta)
    elif self.method == 'prompt':
      self.meta.update(adapter='prompt', prompt={
          'num_virtual': sft.num_virtual_tokens, 'reparam_hidden': sft.prompt_reparam_hidden})
    self.loss_sums = lm_loss.next_token_loss(self.apply, 0.0)
    self.tokens_per_step = config.train.batch_size * config.data.seq_len
    self.flops_per_token = flops.train_flops_per_token(config.model, config.data.seq_len)
    self._eval_fn = train_step.make_eval_step(self.apply, self.param_shardings,
                                              self.frozen_shardings, self.mesh)
    self._pretrain_eval = self._pretrain_validation()

  def _setup_method(self, base_params):
    spec, sft = self.spec, self.config.sft
    if self.method != 'prompt':
      self.trainable = t = Trainable(self.method, spec, base_params, sft)
      self.param_shardings, self.init_params = t.param_shardings, t.init_params
      self.frozen, self.frozen_shardings, self._start = t.frozen, t.frozen_shardings, t.start
      return
    self.frozen, self.frozen_shardings = base_params, spec.param_shardings
    abstract = jax.eval_shape(lambda: base_params)
    make = lambda key, table: soft_prompt.init(  # noqa: E731
        key, table, sft.num_virtual_tokens, sft.prompt_reparam_hidden)
    self.init_params = lambda key: make(key, jax.numpy.zeros(abstract['embed'].shape))
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self.param_shardings = jax.tree.map(lambda _: replicated,
                                        jax.eval_shape(self.init_params, jax.random.key(0)))
    # Real-token initialisation needs the embedding values: computed once, outside jit.
    self._start = jax.device_put(make(jax.random.key(self.config.seed), base_params['embed']),
                                 self.param_shardings)

  def apply(self, params, frozen, batch):
    """Logits of the model as this method trains it."""
    prompt = None
    if self.method == 'prompt':
      model_params, prompt = frozen, soft_prompt.embeddings(params)
    else:
      model_params = self.trainable.model_params(params, frozen)
    return self.spec.apply(model_params, batch['inputs'], batch['positions'],
                           batch['segment_ids'], prompt)

  def start_params(self):
    return self._start

  def trainable_count(self):
    return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(
        jax.eval_shape(self.init_params, jax.random.key(0))))

  def _pretrain_validation(self):
    """The pretraining corpus's validation loss, if --init_from has one prepared."""
    try:
      saved = self.init.saved
      saved.data.tfds_data_dir = tfds_corpus.tfds_dir(saved, self.init.workdir)
      source = tfds_corpus.open_split(saved, self.init.workdir, saved.data.eval_split)
    except Exception:  # e.g. an imported HF model: no corpus to compare with
      return None
    model_apply = lambda params, _, batch: self.spec.apply(  # noqa: E731
        params, batch['inputs'], batch['positions'], batch['segment_ids'])
    model_fn = train_step.make_eval_step(model_apply, self.spec.param_shardings, {}, self.mesh)
    return lambda model_params: lm_validation.validation_loss(
        model_fn, model_params, {}, saved, source, self.tokenizer, self.mesh,
        self.config.train.eval_batches)

  def model_params(self, params):
    if self.method == 'prompt':
      return self.frozen
    return self.trainable.model_params(params, self.frozen)

  def check_compatible(self, meta):
    check_resume(meta, self.config, self.tokenizer, self.meta, 'sft.method')

  def evaluate(self, params):
    metrics = chat_loss.assistant_loss(self._eval_fn, params, self.frozen, self.eval_examples,
                                       self.config, self.mesh, self.config.train.eval_batches)
    if self._pretrain_eval is not None:
      pre = self._pretrain_eval(self.model_params(params))
      metrics['pretrain_loss'] = pre['eval_loss']
      metrics['pretrain_perplexity'] = pre['eval_perplexity']
    return metrics


def run_sft(config, workdir, init_from, resume=True, on_ready=None):
  def plan(stage):
    stats = stage.train_stats
    return (f'sft: {stage.method}, {stage.trainable_count():,} trainable params; '
            f'{len(stage.train_examples):,} training conversations ({stats["empty"]} without an '
            f'assistant reply skipped, {stats.get("cut_off", 0)} whose reply starts beyond '
            f'data.seq_len skipped, {stats["truncated"]} truncated, {stats["dropped_long"]} '
            f'dropped as too long), {len(stage.eval_examples):,} held out')

  def outcome(result):
    if 'eval_loss' not in result:
      return None
    first = _first_eval(os.path.join(workdir, 'metrics.jsonl'))  # step 0 survives a resume
    line = (f'sft: step {result["step"]}, held-out assistant loss {result["eval_loss"]:.4f}'
            + (f' (step 0: {first["eval_loss"]:.4f})' if first else ''))
    if 'pretrain_perplexity' in result:
      line += (f', pretraining perplexity {first["pretrain_perplexity"]:.2f} -> '
               f'{result["pretrain_perplexity"]:.2f}' if first else
               f', pretraining perplexity {result["pretrain_perplexity"]:.2f}')
    size = paths.folder_bytes(os.path.join(workdir, 'checkpoints', str(result['step'])))
    return line + f'; checkpoint {size / 2**20:.2f} MiB'
  return run_stage(SftStage(config, workdir, init_from), workdir, resume, on_ready, plan,
                   outcome)


def _first_eval(path):
  import json
  if not paths.exists(path):
    return None
  for line in paths.read_text(path).splitlines():
    record = json.loads(line)
    if record.get('step') == 0 and 'eval_loss' in record:
      return record
  return None

