"""The chunked packer against Grain's ConcatThenSplit, its resumable state, and the
pretraining loader built on it against the per-document Grain pipeline it replaced."""
import json

import grain
import numpy as np
import pytest

from bench import loader_timing
from configs.errors import DataStateMismatch
from data_pipeline import pretrain_loader, tfds_corpus
from data_pipeline.stream_packing import PackedRowsIterDataset

FIELDS = ('inputs', 'targets', 'segment_ids', 'positions')


def _documents(seq_len, count=300, seed=0, empty=False):
  """Token arrays with every awkward length: 2 ids, exactly seq_len + 1 (one full row
  of inputs), one more and one less, and several rows long; with `empty`, also
  documents of one id (EOS alone: no input token), some right after a full row."""
  rng = np.random.default_rng(seed)
  special = [2, seq_len, seq_len + 1, seq_len + 2, 3 * seq_len + 5] + ([1, 1] if empty else [])
  lengths = list(rng.integers(2, 2 * seq_len, count)) + special * 3
  rng.shuffle(lengths)
  return [rng.integers(3, 1000, n).astype(np.int32) for n in lengths]


def _grain_rows(docs, seq_len):
  """Grain's ConcatThenSplit over one document per element: the reference."""
  elements = grain.MapDataset.source(docs).map(
      lambda ids: {'inputs': ids[:-1], 'targets': ids[1:]}).to_iter_dataset()
  packed = grain.experimental.ConcatThenSplitIterDataset(
      elements, length_struct={'inputs': seq_len, 'targets': seq_len})
  return [{'inputs': p['inputs'], 'targets': p['targets'],
           'segment_ids': p['inputs_segment_ids'], 'positions': p['inputs_positions']}
          for p in packed]


def _chunked(docs, chunk):
  return grain.MapDataset.source(docs).batch(chunk, drop_remainder=False,
                                             batch_fn=list).to_iter_dataset()


def _assert_rows_equal(got, expected):
  assert len(got) == len(expected)
  for i, (a, b) in enumerate(zip(got, expected)):
    for name in FIELDS:
      np.testing.assert_array_equal(a[name], b[name], err_msg=f'row {i} {name}')
      assert a[name].dtype == np.int32


@pytest.mark.parametrize('seq_len,chunk,empty', [(16, 1, False), (16, 7, False),
                                                 (64, 64, False), (33, 5, False),
                                                 (16, 7, True), (8, 3, True)])
def test_rows_equal_grain_concat_then_split(seq_len, chunk, empty):
  docs = _documents(seq_len, empty=empty)
  rows = list(PackedRowsIterDataset(_chunked(docs, chunk), seq_len, chunk))
  _assert_rows_equal(rows, _grain_rows(docs, seq_len))
  # Nothing lost or repeated: the inputs, read back in order, are the documents' inputs.
  stream = np.concatenate([r['inputs'][r['segment_ids'] > 0] for r in rows])
  np.testing.assert_array_equal(stream, np.concatenate([d[:-1] for d in docs]))


def test_empty_documents_alone_and_after_a_full_row_as_grain():
  eos = np.asarray([2], np.int32)
  full = np.arange(5, 10, dtype=np.int32)  # 4 inputs: exactly one row of 4
  for docs in ([eos] * 3, [full, eos, eos, full], [eos, full, eos], [full, eos]):
    rows = list(PackedRowsIterDataset(_chunked(docs, 2), 4, 2))
    _assert_rows_equal(rows, _grain_rows(docs, 4))


def test_every_saved_state_resumes_at_the_next_row():
  seq_len, chunk = 16, 7
  docs = _documents(seq_len, count=80, seed=1, empty=True)
  dataset = PackedRowsIterDataset(_chunked(docs, chunk), seq_len, chunk)
  expected = list(dataset)
  for k in range(len(expected) + 1):
    it = iter(dataset)
    for _ in range(k):
      next(it)
    resumed = iter(dataset)
    resumed.set_state(json.loads(json.dumps(it.get_state())))  # as a checkpoint keeps it
    _assert_rows_equal(list(resumed), expected[k:])


def test_a_state_of_another_loader_is_one_clear_error():
  dataset = PackedRowsIterDataset(_chunked(_documents(16, count=10), 4), 16, 4)
  it = iter(dataset)
  next(it)
  state = it.get_state()
  grain_state = {'parent_state': {'next_index': 3}, 'remainder_slices': {},
                 'elements_from_buffer_after_checkpoint': 0}
  with pytest.raises(DataStateMismatch, match='another loader version'):
    iter(dataset).set_state(grain_state)
  other = PackedRowsIterDataset(_chunked(_documents(16, count=10), 8), 16, 8)
  with pytest.raises(DataStateMismatch, match='chunks of 4 documents'):
    iter(other).set_state(state)


@pytest.mark.parametrize('process_index,process_count', [(0, 1), (1, 3)])
def test_loader_batches_equal_the_per_document_pipeline(tiny_workdir, tiny_config,
                                                         tiny_tokenizer, process_index,
                                                         process_count):
  source = tfds_corpus.open_split(tiny_config, tiny_workdir, 'train')
  seq_len, batch = 128, 4
  new = iter(pretrain_loader.make_dataset(source, tiny_tokenizer, seq_len=seq_len,
                                          batch_size=batch, seed=5, process_index=process_index,
                                          process_count=process_count))
  old = iter(loader_timing.per_document_dataset(
      source, tiny_tokenizer, seq_len=seq_len, batch_size=batch, seed=5,
      process_index=process_index, process_count=process_count))
  for step in range(60):  # past the first chunks, into several documents per row
    a, b = next(new), next(old)
    for name in FIELDS:
      np.testing.assert_array_equal(a[name], b[name], err_msg=f'batch {step} {name}')


@pytest.mark.slow
def test_a_checkpoint_with_an_older_data_state_resumes_its_weights(tiny_workdir, tmp_path):
  """A checkpoint whose data state the packer cannot read (Grain's own packer wrote it)
  restores the weights and restarts the data stream, with one warning line."""
  from tests.cli_helpers import START_OPTIMIZER, run_cli, tiny_pretrain
  workdir = tiny_pretrain(tiny_workdir, tmp_path / 'w')
  path = workdir / 'checkpoints' / '10' / 'data' / 'process_0-of-1.json'
  state = json.loads(path.read_text())
  grain_state = {'parent_state': {'next_index': 7}, 'remainder_slices': {'inputs': [3, 9]},
                 'elements_from_buffer_after_checkpoint': 0}
  path.write_text(json.dumps({'shards': {s: grain_state for s in state['shards']}}))
  result = run_cli('pretrain', '--config=configs/tiny.py', f'--workdir={workdir}',
                   *START_OPTIMIZER, '--config.train.steps=12', '--config.train.batch_size=4',
                   '--config.train.eval_every=0', '--config.checkpoint.save_every_steps=10',
                   '--config.train.peak_tflops=1')
  assert result.returncode == 0, result.stderr[-2000:]
  output = result.stdout + result.stderr
  assert 'another loader version' in output and 'weights are restored' in output, output
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  steps = [json.loads(line)['step'] for line in lines if '"loss"' in line]
  assert steps[-1] == 12 and len(steps) == len(set(steps))  # went on from step 10, once


def test_loader_timing_measures_both_pipelines(tiny_workdir, tiny_config):
  out = loader_timing.measure(tiny_config, tiny_workdir, batch_size=4, seq_len=128,
                              threads=(1,), batches=3, repeats=1)
  assert out['loader_tokens_per_s'][1] > 0 and out['per_document_tokens_per_s'][1] > 0
