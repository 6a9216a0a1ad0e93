"""Shared fixtures: one tiny tokenizer and one prepared dataset per test session."""
import os
import sys

# Mesh tests need 8 devices; the flag must be set before jax is first imported.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import tiny  # noqa: E402
from data_pipeline import documents, embedded, tfds_corpus  # noqa: E402
from data_pipeline import tokenizer as tokenizer_lib  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: end-to-end, multi-process or resume tests')


@pytest.fixture(scope='session')
def tiny_config():
  return tiny.get_config()


@pytest.fixture(scope='session')
def tiny_workdir(tmp_path_factory, tiny_config):
  """A workdir with the tiny tokenizer and the embedded corpus prepared."""
  workdir = str(tmp_path_factory.mktemp('tiny_workdir'))
  tokenizer = tokenizer_lib.train_tokenizer(
      documents.iter_documents(embedded.TRAIN_FILES, tiny_config.data), tiny_config.tokenizer)
  tokenizer_lib.save_tokenizer(tokenizer, os.path.join(workdir, 'tokenizer'))
  tfds_corpus.prepare(tiny_config, workdir)
  return workdir


@pytest.fixture(scope='session')
def tiny_tokenizer(tiny_workdir):
  return tokenizer_lib.load_tokenizer(os.path.join(tiny_workdir, 'tokenizer', 'tokenizer.model'))


from tests.gcs_helpers import gcs  # noqa: E402,F401  (the gs:// emulator fixture)
from tests.serve_helpers import served_workdir, serve_url  # noqa: E402,F401  (run.py serve)


@pytest.fixture(scope='session')
def finished(tmp_path_factory):
  """The cut-down pipeline, stopped once in SFT and run again to the end (several test
  modules read it; none changes it)."""
  from tests.pipeline_helpers import run_finished_pipeline
  return run_finished_pipeline(tmp_path_factory)
