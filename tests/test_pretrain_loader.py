"""Packing, per-process sharding, determinism and resumable iterator state."""
import numpy as np
import pytest

from data_pipeline import pretrain_loader, tfds_corpus

SEQ_LEN = 64


def _docs(n):
  # Distinct lengths so a lost or duplicated token cannot cancel out.
  return [{'text': f'document {i}: ' + 'word ' * (i % 37) + '字' * (i % 5)} for i in range(n)]


def _expected_targets(records, tokenizer):
  return [np.asarray(tokenizer.encode(r['text']) + [tokenizer.eos_id]) for r in records]


def _epoch(source, tokenizer, **kwargs):
  kwargs.setdefault('seed', 7)
  ds = pretrain_loader.make_dataset(source, tokenizer, seq_len=SEQ_LEN, batch_size=4,
                                    num_epochs=1, drop_remainder=False, **kwargs)
  return list(ds)


def _segments(batches):
  """Splits packed rows back into per-segment target arrays, in order."""
  pieces = []
  for batch in batches:
    for row in range(batch['targets'].shape[0]):
      seg = batch['segment_ids'][row]
      for s in np.unique(seg[seg > 0]):
        pieces.append((batch['targets'][row][seg == s], batch['positions'][row][seg == s],
                       batch['inputs'][row][seg == s]))
  return pieces


def test_packing_loses_and_duplicates_nothing(tiny_tokenizer):
  source = _docs(300)
  batches = _epoch(source, tiny_tokenizer, shuffle=False)
  pieces = _segments(batches)
  stream = np.concatenate([p[0] for p in pieces])
  expected = np.concatenate(_expected_targets(source, tiny_tokenizer))
  np.testing.assert_array_equal(stream, expected)
  # Inputs are the targets shifted right by one, with BOS first in each document.
  inputs = np.concatenate([p[2] for p in pieces])
  assert (inputs == tiny_tokenizer.bos_id).sum() == len(source)
  np.testing.assert_array_equal(inputs[1:][inputs[1:] != tiny_tokenizer.bos_id],
                                stream[:-1][stream[:-1] != tiny_tokenizer.eos_id])


def test_segments_restart_positions_and_end_with_eos(tiny_tokenizer):
  source = _docs(200)
  pieces = _segments(_epoch(source, tiny_tokenizer, shuffle=False))
  for targets, positions, _ in pieces:
    # A document split across rows continues as a fresh segment from position 0.
    np.testing.assert_array_equal(positions, np.arange(len(positions)))
  # Every document ends with EOS, and EOS appears nowhere else.
  eos = tiny_tokenizer.eos_id
  stream = np.concatenate([p[0] for p in pieces])
  assert (stream == eos).sum() == len(source)
  ends = np.cumsum([len(t) for t in _expected_targets(source, tiny_tokenizer)]) - 1
  assert (stream[ends] == eos).all()
  for batch in _epoch(source, tiny_tokenizer, shuffle=False):
    seg = batch['segment_ids']
    pad = seg == 0
    assert (batch['targets'][pad] == 0).all()
    # segment ids never decrease within a row; a new segment starts at position 0 or row start
    assert (np.diff(np.where(pad, seg.max() + 1, seg), axis=1) >= 0).all()


@pytest.mark.parametrize('process_count', [2, 4])
def test_process_shards_are_disjoint_and_cover_an_epoch(tiny_tokenizer, process_count):
  source = _docs(203)  # not divisible by 2 or 4
  seen = []
  for p in range(process_count):
    ds = pretrain_loader.documents_dataset(source, seed=3, shuffle=True, process_index=p,
                                           process_count=process_count, num_epochs=1)
    seen.append([r['text'] for r in ds])
  flat = [t for shard in seen for t in shard]
  assert len(flat) == len(set(flat)) == len(source)
  assert set(flat) == {r['text'] for r in source}
  assert max(map(len, seen)) - min(map(len, seen)) <= 1


def test_epochs_reshuffle_and_each_is_a_permutation(tiny_tokenizer):
  source = _docs(50)
  ds = pretrain_loader.documents_dataset(source, seed=3, shuffle=True, process_index=0,
                                         process_count=1, num_epochs=2)
  texts = [r['text'] for r in ds]
  first, second = texts[:50], texts[50:]
  assert sorted(first) == sorted(second) == sorted(r['text'] for r in source)
  assert first != second


def test_same_seed_same_batches_other_seed_differs(tiny_tokenizer):
  source = _docs(120)
  a = _epoch(source, tiny_tokenizer, seed=1)
  b = _epoch(source, tiny_tokenizer, seed=1)
  c = _epoch(source, tiny_tokenizer, seed=2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['inputs'], y['inputs'])
  assert any(not np.array_equal(x['inputs'], z['inputs']) for x, z in zip(a, c))


def test_restored_iterator_continues_exactly(tiny_workdir, tiny_config, tiny_tokenizer):
  source = tfds_corpus.open_split(tiny_config, tiny_workdir, 'train')
  make = lambda: iter(pretrain_loader.train_dataset(tiny_config, source, tiny_tokenizer, 0, 1))
  reference = make()
  expected = [next(reference) for _ in range(12)]
  interrupted = make()
  for _ in range(5):
    next(interrupted)
  state = interrupted.get_state()
  resumed = make()
  resumed.set_state(state)
  for k in range(5, 12):
    got = next(resumed)
    for name in expected[k]:
      np.testing.assert_array_equal(got[name], expected[k][name])


def test_prepared_dataset_holds_every_document(tiny_workdir, tiny_config):
  from data_pipeline import documents, embedded
  train = tfds_corpus.open_split(tiny_config, tiny_workdir, 'train')
  docs = list(documents.iter_documents(embedded.TRAIN_FILES, tiny_config.data))
  assert len(train) == len(docs)
  sample = {train[i]['text'].decode() for i in range(0, len(train), 997)}
  assert sample <= set(docs)
