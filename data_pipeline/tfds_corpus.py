"""Text/JSONL files → a TFDS dataset in array_record format (no TensorFlow).

`prepare` writes WORKDIR/tfds/text_corpus/1.0.0/ with `train` and `validation`
splits; training then reads it with random access through `tfds.data_source`.
A manifest of the inputs (paths, sizes, mtimes, parse settings) guards against
silently training on a stale preparation after the files changed.
"""
import hashlib
import json
import os

from absl import logging
import tensorflow_datasets as tfds

from configs.errors import UserError
from data_pipeline import documents
from data_pipeline import embedded

DATASET_NAME = 'text_corpus'
MANIFEST = 'manifest.json'


class TextCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One example per document: {"text": str}. Not registered: readers load it
  from its files by name and data_dir, like any prepared TFDS dataset."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, split_files, data_config, **kwargs):
    self._split_files = split_files
    self._data_config = data_config
    super().__init__(**kwargs)

  def _info(self):
    # DatasetInfo directly: dataset_info_from_configs looks for metadata files
    # beside the module, which a builder living in our package does not have.
    return tfds.core.DatasetInfo(
        builder=self,
        description='Documents read from local text/JSONL files.',
        features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(files) for split, files in self._split_files.items()}

  def _generate_examples(self, files):
    for file_index, path in enumerate(documents.expand_paths(files)):
      for doc_index, doc in enumerate(documents.read_documents(
          path, self._data_config.text_format, self._data_config.text_field,
          self._data_config.text_split)):
        yield f'{file_index}:{doc_index}', {'text': doc}


def tfds_dir(config, workdir):
  return config.data.tfds_data_dir or os.path.join(workdir, 'tfds')


def _manifest(split_files, data_config):
  entries = {}
  for split, files in split_files.items():
    entries[split] = [(os.path.abspath(p), os.path.getsize(p), int(os.path.getmtime(p)))
                      for p in documents.expand_paths(files, f'data.{split}_files')]
  settings = {k: data_config[k] for k in ('text_format', 'text_field', 'text_split')}
  digest = hashlib.sha256(json.dumps([entries, settings]).encode()).hexdigest()[:16]
  return {'fingerprint': digest, 'files': entries, 'settings': settings}


def prepare(config, workdir):
  """Builds the dataset (once); returns (data_dir, {split: num_documents})."""
  split_files = {'train': embedded.train_files(config),
                 'validation': embedded.eval_files(config)}
  manifest = _manifest(split_files, config.data)
  data_dir = tfds_dir(config, workdir)
  manifest_path = os.path.join(data_dir, DATASET_NAME, MANIFEST)
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      previous = json.load(f)
    if previous['fingerprint'] != manifest['fingerprint']:
      raise UserError(f'{data_dir} was prepared from other files or settings; use a new '
                      'workdir (or set data.tfds_data_dir) for a different corpus')
  else:
    for split, files in split_files.items():  # fail on empty corpora before writing anything
      next(iter(documents.iter_documents(files, config.data, f'data.{split}_files')))
  tfds.disable_progress_bar()
  builder = TextCorpus(split_files=split_files, data_config=config.data, data_dir=data_dir,
                       file_format='array_record')
  builder.download_and_prepare()
  os.makedirs(os.path.dirname(manifest_path), exist_ok=True)
  with open(manifest_path, 'w') as f:
    json.dump(manifest, f, indent=1)
  counts = {split: info.num_examples for split, info in builder.info.splits.items()}
  logging.info('prepared %s in %s: %s', DATASET_NAME, data_dir, counts)
  return data_dir, counts


def open_split(config, workdir, split):
  """Random-access source of {'text': bytes} records for one split."""
  name = config.data.tfds_name or DATASET_NAME
  data_dir = tfds_dir(config, workdir)
  if not config.data.tfds_name and not os.path.isdir(os.path.join(data_dir, DATASET_NAME)):
    raise UserError(f'no prepared dataset in {data_dir}; run `python run.py prepare` with this '
                    'config and workdir first')
  try:
    return tfds.data_source(name, data_dir=data_dir, split=split)
  except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, ValueError) as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f'TFDS dataset {name!r} split {split!r} not readable from {data_dir} '
                    f'({first_line}); check data.tfds_name, data.tfds_data_dir and the split '
                    'name') from None
