"""Which config keys make a finished pipeline stage stale (no stage is run here)."""
from commands import pipeline_record
from configs import stages
from configs import tiny


def test_shaping_keys_hold_what_changes_the_result_and_nothing_that_only_runs_it():
  config = tiny.get_config()
  pretrain = pipeline_record.shaping_keys('pretrain', stages.for_stage(config, 'pretrain'))
  sft = pipeline_record.shaping_keys('sft', stages.for_stage(config, 'sft'))
  assert pretrain['train.learning_rate'] == 4e-3 and pretrain['model.d_model'] == 128
  assert (pretrain['train.optimizer'], pretrain['train.muon_learning_rate']) == ('muon', 8e-3)
  assert sft['train.learning_rate'] == config.pipeline.sft.train.learning_rate
  for keys in (pretrain, sft):
    # how a step is run or logged: free to change on a re-run
    assert not any(k.startswith(('mesh.', 'checkpoint.')) for k in keys)
    for free in ('train.microbatches', 'train.log_every', 'train.eval_every',
                 'train.peak_tflops', 'data.num_threads'):
      assert free not in keys
  assert 'model.d_model' not in sft  # the model comes from pretraining's digest


def test_a_new_microbatch_count_keeps_the_digest_and_a_new_rate_does_not():
  def pretrain_digest(**train):
    config = tiny.get_config()
    config.train.update(train)
    return pipeline_record.digest(pipeline_record.shaping_keys('pretrain', config), [])
  assert pretrain_digest(microbatches=2) == pretrain_digest(microbatches=4)
  assert pretrain_digest(learning_rate=1e-3) != pretrain_digest()
