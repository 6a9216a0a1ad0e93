"""`run.py tokenizer` and `run.py prepare`."""
import json
import os
import time

from absl import logging

from configs.errors import UserError
from data_pipeline import documents
from data_pipeline import embedded
from data_pipeline import tfds_corpus
from data_pipeline import tokenizer as tokenizer_lib
from engine import paths


def chars_per_token(tokenizer, files, data_config):
  docs = list(documents.iter_documents(files, data_config, 'data.eval_files'))
  tokens = sum(len(ids) for ids in tokenizer.encode_batch(docs))
  return sum(len(d) for d in docs) / max(tokens, 1)


def run_tokenizer(config, workdir, overwrite=False):
  """Trains the tokenizer into WORKDIR/tokenizer/ (kept if it already exists)."""
  directory = os.path.join(workdir, 'tokenizer')
  path = os.path.join(directory, tokenizer_lib.MODEL_FILE)
  if paths.exists(path) and not overwrite:
    tokenizer = tokenizer_lib.load_tokenizer(path, config.tokenizer.vocab_size)
    print(f'tokenizer: kept existing {path} ({tokenizer.vocab_size} pieces, fingerprint '
          f'{tokenizer.fingerprint}); pass --overwrite to retrain')
    return tokenizer
  if paths.exists(path) and paths.isdir(os.path.join(workdir, 'checkpoints')):
    raise UserError(f'{workdir} has checkpoints trained with the existing tokenizer; retrain '
                    'the tokenizer in a new workdir')
  start = time.time()
  docs = documents.iter_documents(embedded.train_files(config), config.data)
  tokenizer = tokenizer_lib.train_tokenizer(docs, config.tokenizer)
  tokenizer_lib.save_tokenizer(tokenizer, directory)
  report = {'vocab_size': tokenizer.vocab_size, 'fingerprint': tokenizer.fingerprint,
            'train_seconds': round(time.time() - start, 2)}
  for eval_file in embedded.eval_files(config):
    for path_ in documents.expand_paths([eval_file], 'data.eval_files'):
      report[f'chars_per_token[{os.path.basename(path_)}]'] = round(
          chars_per_token(tokenizer, [path_], config.data), 3)
  paths.write_atomic(os.path.join(directory, 'report.json'), json.dumps(report, indent=1))
  print('tokenizer: ' + ', '.join(f'{k}={v}' for k, v in report.items()))
  return tokenizer


def run_prepare(config, workdir):
  """Builds the TFDS array_record dataset, or checks a named existing one."""
  if config.data.tfds_name:
    for split in (config.data.train_split, config.data.eval_split):
      source = tfds_corpus.open_split(config, workdir, split)
      print(f'prepare: {config.data.tfds_name} split {split}: {len(source)} records')
    return
  start = time.time()
  data_dir, counts = tfds_corpus.prepare(config, workdir)
  logging.info('prepare took %.1fs', time.time() - start)
  print(f'prepare: {tfds_corpus.DATASET_NAME} in {data_dir}: ' +
        ', '.join(f'{split}={n} documents' for split, n in sorted(counts.items())))
