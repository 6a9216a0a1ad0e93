"""Text/JSONL/Parquet files → a TFDS dataset in array_record format (no TensorFlow).

`prepare` writes WORKDIR/tfds/text_corpus/1.0.0/ with `train` and `validation`
splits; training then reads it with random access through `tfds.data_source`.
A manifest of the inputs (paths, sizes, mtimes, parse settings) guards against
silently training on a stale preparation after the files changed.

The shards are written by `data.prepare_workers` processes (prepare_shards.py)
and described with TFDS's own metadata writer, so any TFDS reader opens them as
if a TFDS builder had written them. Records are in input order (file by file,
document by document) and identical for any number of workers. The dataset is
built in a temporary folder and moved into place (uploaded, for a gs:// data
dir: array_record cannot write to object storage) only when complete, so a bad
input leaves nothing behind.
"""
import hashlib
import json
import os
import shutil
import tempfile

from absl import logging
from etils import epath

from configs.errors import UserError
from data_pipeline import documents
from data_pipeline import embedded
from data_pipeline import prepare_shards
from engine import paths

DATASET_NAME = 'text_corpus'
VERSION = '1.0.0'
MANIFEST = 'manifest.json'
DESCRIPTION = 'Documents read from text/JSONL/Parquet files.'
SPLIT_KEYS = {'train': 'data.train_files', 'validation': 'data.eval_files'}


def tfds_dir(config, workdir):
  return config.data.tfds_data_dir or os.path.join(workdir, 'tfds')


def _stat(path):
  """(the path as recorded in the manifest, size, int mtime)."""
  stat = epath.Path(path).stat()
  return (path if paths.is_remote(path) else os.path.abspath(path), stat.length, int(stat.mtime))


def _manifest(split_files, data_config):
  entries = {}
  for split, files in split_files.items():
    entries[split] = [_stat(p) for p in documents.expand_paths(files, SPLIT_KEYS[split])]
  settings = {k: data_config[k] for k in ('text_format', 'text_field', 'text_split')}
  digest = hashlib.sha256(json.dumps([entries, settings]).encode()).hexdigest()[:16]
  return {'fingerprint': digest, 'files': entries, 'settings': settings}


def _features(text_field):
  import tensorflow_datasets as tfds
  return tfds.features.FeaturesDict({text_field: tfds.features.Text()})


def _workers(data_config):
  workers = data_config.get('prepare_workers', 0)
  if workers < 0:
    raise UserError(f'data.prepare_workers={workers} must be >= 0 (0 = one per CPU core)')
  return workers or os.cpu_count() or 1


def _shard_bytes(data_config):
  shard_mb = data_config.get('prepare_shard_mb', 128.0)
  if shard_mb <= 0:
    raise UserError(f'data.prepare_shard_mb={shard_mb} must be > 0')
  return max(1, int(shard_mb * 2**20))


def _build(build_dir, manifest, data_config):
  """Writes the shards and TFDS metadata into `build_dir`; returns {split: count}."""
  import tensorflow_datasets as tfds
  settings = {k: data_config[k] for k in ('text_format', 'text_field', 'text_split')}
  shard_bytes = _shard_bytes(data_config)
  jobs = []
  for split, entries in manifest['files'].items():
    files = [(path, size) for path, size, _ in entries]
    for index, pieces in enumerate(prepare_shards.plan_units(files, settings, shard_bytes)):
      jobs.append({'split': split, 'pieces': pieces, 'settings': settings,
                   'out': os.path.join(build_dir, f'unit-{split}-{index:05d}')})
  results = prepare_shards.run_jobs(jobs, _workers(data_config))
  for path in sorted({p for r in results for p in r['invalid_utf8']}):
    documents.warn_invalid_utf8(path)
  split_infos, counts = [], {}
  for split in manifest['files']:
    done = [(job, r) for job, r in zip(jobs, results) if job['split'] == split and r['count']]
    counts[split] = sum(r['count'] for _, r in done)
    if not counts[split]:
      raise UserError(f'{SPLIT_KEYS[split]} holds no documents (all files are empty); give '
                      'files with text')
    for shard, (job, _) in enumerate(done):
      os.rename(job['out'], os.path.join(
          build_dir, f'{DATASET_NAME}-{split}.array_record-{shard:05d}-of-{len(done):05d}'))
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[r['count'] for _, r in done],
        num_bytes=sum(r['num_bytes'] for _, r in done)))
  tfds.folder_dataset.write_metadata(
      data_dir=build_dir, features=_features(data_config.text_field), split_infos=split_infos,
      version=VERSION, check_data=False, description=DESCRIPTION)
  return counts


def _counts(version_dir):
  info = json.loads((epath.Path(version_dir) / 'dataset_info.json').read_text())
  return {s['name']: sum(int(n) for n in s.get('shardLengths', [])) for s in info['splits']}


def _missing_ancestor(path):
  """The highest folder of `path` that does not exist yet (None if it exists)."""
  top, path = None, os.path.abspath(path)
  while not os.path.exists(path):
    top, path = path, os.path.dirname(path)
  return top


def _local_build_dir(data_dir):
  """A fresh folder beside the final one (same disk: moved in by one rename); folders
  left by a killed prepare are removed first."""
  parent = os.path.join(data_dir, DATASET_NAME)
  os.makedirs(parent, exist_ok=True)
  for name in os.listdir(parent):
    if name.startswith(f'.{VERSION}.incomplete-'):
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
  return tempfile.mkdtemp(prefix=f'.{VERSION}.incomplete-', dir=parent)


def prepare(config, workdir):
  """Builds the dataset (once); returns (data_dir, {split: num_documents})."""
  split_files = {'train': embedded.train_files(config),
                 'validation': embedded.eval_files(config)}
  manifest = _manifest(split_files, config.data)
  data_dir = tfds_dir(config, workdir)
  version_dir = os.path.join(data_dir, DATASET_NAME, VERSION)
  manifest_path = epath.Path(data_dir) / DATASET_NAME / MANIFEST
  if manifest_path.exists():
    previous = json.loads(manifest_path.read_text())
    if previous['fingerprint'] != manifest['fingerprint']:
      raise UserError(f'{data_dir} was prepared from other files or settings; use a new '
                      'workdir (or set data.tfds_data_dir) for a different corpus')
    if (epath.Path(version_dir) / 'dataset_info.json').exists():
      return data_dir, _counts(version_dir)
  for split, files in split_files.items():  # fail on empty corpora before writing anything
    next(iter(documents.iter_documents(files, config.data, SPLIT_KEYS[split])))
  remote = paths.is_remote(data_dir)
  created = None if remote else _missing_ancestor(os.path.join(data_dir, DATASET_NAME))
  # array_record cannot write to gs://: build on the local disk, then upload
  build_dir = tempfile.mkdtemp(prefix='prepare-') if remote else _local_build_dir(data_dir)
  try:
    counts = _build(build_dir, manifest, config.data)
    if remote:
      paths.upload_tree(build_dir, version_dir)
    else:
      if os.path.exists(version_dir):  # a build without manifest: unfinished or foreign
        shutil.rmtree(version_dir)
      os.rename(build_dir, version_dir)
    manifest_path.write_text(json.dumps(manifest, indent=1))
  except BaseException:
    shutil.rmtree(build_dir, ignore_errors=True)
    if created:
      shutil.rmtree(created, ignore_errors=True)
    raise
  shutil.rmtree(build_dir, ignore_errors=True)
  logging.info('prepared %s in %s: %s', DATASET_NAME, data_dir, counts)
  return data_dir, counts


def open_split(config, workdir, split):
  """Random-access source of {data.text_field: bytes} records for one split."""
  import tensorflow_datasets as tfds
  name = config.data.tfds_name or DATASET_NAME
  data_dir = tfds_dir(config, workdir)
  if not config.data.tfds_name and not (epath.Path(data_dir) / DATASET_NAME).is_dir():
    raise UserError(f'no prepared dataset in {data_dir}; run `python run.py prepare` with this '
                    'config and workdir first')
  try:
    return tfds.data_source(name, data_dir=data_dir, split=split)
  except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, ValueError) as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f'TFDS dataset {name!r} split {split!r} not readable from {data_dir} '
                    f'({first_line}); check data.tfds_name, data.tfds_data_dir and the split '
                    'name') from None
