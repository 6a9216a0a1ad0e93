"""`prepare` in N processes writes the same dataset for any N, readable by the
loader; bad input is one error line and leaves nothing behind."""
import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from configs import tiny
from configs.errors import UserError
from data_pipeline import documents
from data_pipeline import prepare_shards
from data_pipeline import pretrain_loader
from data_pipeline import tfds_corpus
from tests.cli_helpers import one_line_error, run_cli
from tests.test_corpus_formats import COMPRESS, jsonl_bytes, make_docs, text_bytes
from tests.test_corpus_formats import write_parquet

SHARD_MB = 0.004  # ~4 KB units: the small corpus below is cut into dozens of shards


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """A folder of every kind of piece: text and JSONL cut into byte ranges, compressed
  files, Parquet row groups, an empty file, stray invalid UTF-8."""
  folder = tmp_path_factory.mktemp('corpus')
  docs = make_docs(900, seed=11)
  text = text_bytes(docs[:200]).replace(b'\n\n', b'\n \t\n\n', 7).replace(b'\n\n', b'\r\n\r\n', 5)
  (folder / 'a_plain.txt').write_bytes(b'\n  \n' + text + b'\xff stray byte\n')
  (folder / 'b_empty.txt').write_bytes(b'')
  (folder / 'c.jsonl').write_bytes(jsonl_bytes(docs[200:500]))
  (folder / 'd.jsonl.zst').write_bytes(COMPRESS['zst'](jsonl_bytes(docs[500:600])))
  (folder / 'e.txt.gz').write_bytes(gzip.compress(text_bytes(docs[600:650])))
  write_parquet(folder / 'f.parquet', docs[650:900], rows_per_group=20)
  (folder / 'held_out.jsonl').write_bytes(jsonl_bytes(docs[:40]))
  return folder


def config_for(corpus, workers, **data):
  config = tiny.get_config()
  config.data.train_files = (f'{corpus}/[a-f]*',)
  config.data.eval_files = (str(corpus / 'held_out.jsonl'),)
  config.data.prepare_workers = workers
  config.data.prepare_shard_mb = SHARD_MB
  for key, value in data.items():
    config.data[key] = value
  return config


def records(data_dir, split, field='text'):
  source = tfds.data_source(tfds_corpus.DATASET_NAME, data_dir=data_dir, split=split)
  return [source[i][field] for i in range(len(source))]


def shard_files(data_dir):
  folder = os.path.join(data_dir, tfds_corpus.DATASET_NAME, tfds_corpus.VERSION)
  return {name: open(os.path.join(folder, name), 'rb').read()
          for name in sorted(os.listdir(folder)) if 'array_record' in name}


def test_any_number_of_workers_gives_the_same_dataset(corpus, tmp_path):
  config = config_for(corpus, 1)
  expected = [d.encode() for d in documents.iter_documents(config.data.train_files,
                                                           config.data)]
  assert len(expected) == 900  # the stray byte joins the last block; b_empty adds none
  built = {}
  for workers in (1, 2, 3):
    workdir = str(tmp_path / f'w{workers}')
    data_dir, counts = tfds_corpus.prepare(config_for(corpus, workers), workdir)
    assert counts == {'train': len(expected), 'validation': 40}
    assert records(data_dir, 'train') == expected
    assert records(data_dir, 'validation') == [d.encode() for d in make_docs(900, seed=11)[:40]]
    built[workers] = shard_files(data_dir)
  assert len([n for n in built[1] if '-train.' in n]) >= 15  # really cut into many units
  units = prepare_shards.plan_units(
      [(p, os.path.getsize(p)) for p in documents.expand_paths(config.data.train_files)],
      {k: config.data[k] for k in ('text_format', 'text_field', 'text_split')},
      int(SHARD_MB * 2**20))
  starts = {p.rsplit('/', 1)[1]: [s for q, s, _ in sum(units, []) if q == p]
            for p, _, _ in sum(units, [])}
  assert len(starts['a_plain.txt']) >= 3 and len(starts['c.jsonl']) >= 5  # byte ranges
  assert starts['f.parquet'] == list(range(13))  # row groups
  assert built[2] == built[1] and built[3] == built[1]  # byte for byte, same file names


def test_the_loader_reads_a_prepared_parquet_column(corpus, tmp_path):
  path = tmp_path / 'fineweb.parquet'
  docs = make_docs(120, seed=12)
  write_parquet(path, docs, rows_per_group=10, field='content')
  config = config_for(corpus, 2, text_field='content')
  config.data.train_files = config.data.eval_files = (str(path),)
  tfds_corpus.prepare(config, str(tmp_path / 'w'))
  source = tfds_corpus.open_split(config, str(tmp_path / 'w'), 'train')
  assert [pretrain_loader.record_text(source[i], 'content') for i in range(len(source))] == docs


def test_prepare_again_keeps_the_dataset_and_refuses_changed_files(corpus, tmp_path):
  config = config_for(corpus, 1)
  workdir = str(tmp_path / 'w')
  _, counts = tfds_corpus.prepare(config, workdir)
  before = shard_files(os.path.join(workdir, 'tfds'))
  assert tfds_corpus.prepare(config_for(corpus, 2), workdir)[1] == counts  # workers: same
  assert shard_files(os.path.join(workdir, 'tfds')) == before
  with pytest.raises(UserError, match='prepared from other files'):
    tfds_corpus.prepare(config_for(corpus, 1, text_split='file'), workdir)


def test_a_bad_line_deep_in_a_range_fails_with_its_line_and_writes_nothing(tmp_path):
  docs = make_docs(400, seed=13)
  lines = jsonl_bytes(docs).split(b'\n')
  lines[333] = b'{"text": "cut'
  (tmp_path / 'big.jsonl').write_bytes(b'\n'.join(lines))
  (tmp_path / 'held_out.jsonl').write_bytes(jsonl_bytes(docs[:5]))
  config = config_for(tmp_path, 2)
  config.data.train_files = (str(tmp_path / 'big.jsonl'),)
  workdir = tmp_path / 'w'
  with pytest.raises(UserError, match=r'big\.jsonl:334 is not valid JSON'):
    tfds_corpus.prepare(config, str(workdir))
  assert not workdir.exists()


def test_bad_parquet_is_one_error_line_and_no_workdir(tmp_path):
  path = tmp_path / 'fineweb.parquet'
  pq.write_table(pa.table({'id': [1, 2], 'content': ['a', 'b']}), path)
  result = run_cli('prepare', '--config=configs/tiny.py', f'--workdir={tmp_path / "w"}',
                   f'--config.data.train_files={path}')
  one_line_error(result, 'has no column "text" (its columns: id, content)')
  assert not (tmp_path / 'w').exists()


def test_damaged_zst_in_a_worker_is_one_error_line_and_nothing_written(corpus, tmp_path):
  data = COMPRESS['zst'](jsonl_bytes(make_docs(3000, seed=14)))
  (tmp_path / 'in').mkdir()
  (tmp_path / 'in' / 'a.jsonl').write_bytes(jsonl_bytes(make_docs(300, seed=15)))
  (tmp_path / 'in' / 'b.jsonl.zst').write_bytes(data[:len(data) // 2])
  (tmp_path / 'w').mkdir()
  json.dump({'kept': True}, open(tmp_path / 'w' / 'notes.json', 'w'))
  result = run_cli('prepare', '--config=configs/tiny.py', f'--workdir={tmp_path / "w"}',
                   f'--config.data.train_files={tmp_path / "in"}',
                   '--config.data.prepare_workers=2', f'--config.data.prepare_shard_mb={SHARD_MB}')
  one_line_error(result, f'{tmp_path / "in" / "b.jsonl.zst"} is not a valid zstd file')
  assert os.listdir(tmp_path / 'w') == ['notes.json']
  result = run_cli('prepare', '--config=configs/tiny.py', f'--workdir={tmp_path / "w"}',
                   f'--config.data.train_files={tmp_path / "in" / "*.parquet"}')
  one_line_error(result, 'matches no files')


def test_gs_inputs_and_gs_data_dir_give_the_local_dataset(corpus, tmp_path, gcs):
  from etils import epath
  bucket = gcs.create_bucket('prepare-parallel')
  for name in sorted(os.listdir(corpus)):
    (epath.Path(bucket) / 'in' / name).write_bytes((corpus / name).read_bytes())
  (epath.Path(bucket) / 'in' / '.hidden' / 'x.txt').write_text('not data')
  assert documents.expand_paths([f'{bucket}/in']) == [
      f'{bucket}/in/{name}' for name in sorted(os.listdir(corpus))]
  config = config_for(corpus, 2)
  _, local_counts = tfds_corpus.prepare(config, str(tmp_path / 'local'))
  config.data.train_files = (f'{bucket}/in/[a-f]*',)
  config.data.eval_files = (f'{bucket}/in/held_out.jsonl',)
  config.data.tfds_data_dir = f'{bucket}/tfds'
  data_dir, counts = tfds_corpus.prepare(config, str(tmp_path / 'unused'))
  assert data_dir == f'{bucket}/tfds' and counts == local_counts
  for split in ('train', 'validation'):
    assert records(data_dir, split) == records(str(tmp_path / 'local' / 'tfds'), split)
  assert not (tmp_path / 'unused').exists()
  assert tfds_corpus.prepare(config, str(tmp_path / 'unused'))[1] == counts  # kept
