"""`run.py pretrain`: next-token prediction on the prepared corpus, on the engine.

This stage gives the engine its data (the packed Grain stream of the TFDS
corpus), its objective (mean cross-entropy over real tokens, + z-loss), the
whole model as trainable params initialised from `seed`, and a validation loss.
"""
import jax

from configs.errors import UserError
from data_pipeline import pretrain_loader
from data_pipeline import tfds_corpus
from data_pipeline import tokenizer as tokenizer_lib
from data_pipeline.global_batch import process_row_block
from engine import checkpointing
from engine import flops
from engine import lm_loss
from engine import mesh as mesh_lib
from engine import optimizer
from engine import train_state
from engine import train_step
from engine.stage import Stage
from engine.trainer import Trainer
from evaluation import lm_validation


def apply_model(spec):
  return lambda params, _, batch: spec.apply(params, batch['inputs'], batch['positions'],
                                             batch['segment_ids'])


class PretrainStage(Stage):
  name = 'pretrain'

  def __init__(self, config, workdir):
    self.config, self.workdir = config, workdir
    self.tokenizer = tokenizer_lib.load_tokenizer(
        tokenizer_lib.tokenizer_path(workdir, config.tokenizer), config.model.vocab_size)
    self.mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.check_divisible(config, self.mesh)
    self.spec = train_state.ModelSpec(config.model, self.mesh)
    self.tx = optimizer.make_optimizer(config.train)
    self.schedule = optimizer.learning_rate_schedule(config.train)
    self.train_source = tfds_corpus.open_split(config, workdir, config.data.train_split)
    self.eval_source = tfds_corpus.open_split(config, workdir, config.data.eval_split)
    if len(self.train_source) == 0:
      raise UserError('the training split is empty; give files with text')
    row_block, num_blocks = process_row_block(self.mesh, config.train.batch_size)
    self.data_iter = pretrain_loader.train_dataset(
        config, self.train_source, self.tokenizer, row_block, num_blocks)
    self.meta = checkpointing.metadata(config, self.tokenizer, self.mesh)
    self.param_shardings = self.spec.param_shardings
    self.init_params = self.spec.init_params
    self.loss_sums = lm_loss.next_token_loss(apply_model(self.spec), config.train.z_loss)
    self.tokens_per_step = config.train.batch_size * config.data.seq_len
    self.flops_per_token = flops.train_flops_per_token(config.model, config.data.seq_len)
    self._eval_fn = train_step.make_eval_step(apply_model(self.spec), self.param_shardings, {},
                                              self.mesh)

  def check_compatible(self, meta):
    checkpointing.check_compatible(meta, self.config, self.tokenizer)

  def evaluate(self, params):
    return lm_validation.validation_loss(self._eval_fn, params, {}, self.config,
                                         self.eval_source, self.tokenizer, self.mesh,
                                         self.config.train.eval_batches)


def run_pretrain(config, workdir, resume=True, on_ready=None):
  """Builds the stage and the trainer (every check passes or raises) and trains.

  `on_ready` runs once the checks passed, before training: that is when
  WORKDIR/config.json may be replaced.
  """
  trainer = Trainer(PretrainStage(config, workdir), resume)
  if on_ready is not None:
    on_ready()
  result = trainer.run()
  if jax.process_index() == 0 and 'eval_loss' in result:
    print(f'pretrain: step {result["step"]}, eval_loss {result["eval_loss"]:.4f} (at step '
          f'{result["eval_step"]}), eval_perplexity {result["eval_perplexity"]:.2f}', flush=True)
  elif jax.process_index() == 0 and result['step'] >= config.train.steps:
    print(f'pretrain: already at step {result["step"]} of train.steps={config.train.steps}; '
          'nothing to train (raise train.steps to continue)', flush=True)
  return result
