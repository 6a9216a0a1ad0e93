import json
import logging

import pytest

from configs import base
from configs.errors import UserError
from data_pipeline import documents


@pytest.fixture
def data_config():
  return base.get_config().data


def test_text_blocks_and_jsonl(tmp_path, data_config):
  (tmp_path / 'a.txt').write_text('first doc\nline two\n\n\nsecond doc\n  \nthird\n')
  (tmp_path / 'b.jsonl').write_text('\n'.join(json.dumps({'text': t}) for t in ['x', '中文']))
  docs = list(documents.iter_documents([str(tmp_path)], data_config))
  assert docs == ['first doc\nline two', 'second doc', 'third', 'x', '中文']


def test_one_document_per_file(tmp_path, data_config):
  (tmp_path / 'a.txt').write_text('p1\n\np2\n')
  data_config.text_split = 'file'
  assert list(documents.iter_documents([str(tmp_path / 'a.txt')], data_config)) == ['p1\n\np2\n']


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path, data_config, caplog):
  (tmp_path / 'bad.txt').write_bytes(b'good \xff\xfe bytes')
  with caplog.at_level(logging.WARNING):
    docs = list(documents.iter_documents([str(tmp_path / 'bad.txt')], data_config))
  assert docs == ['good \ufffd\ufffd bytes']
  assert 'not valid UTF-8' in caplog.text


@pytest.mark.parametrize('content,match', [
    ('', 'holds no documents'),
    ('\n\n  \n', 'holds no documents'),
])
def test_empty_corpus_is_a_user_error(tmp_path, data_config, content, match):
  (tmp_path / 'empty.txt').write_text(content)
  with pytest.raises(UserError, match=match):
    list(documents.iter_documents([str(tmp_path / 'empty.txt')], data_config))


def test_missing_path_and_bad_jsonl(tmp_path, data_config):
  with pytest.raises(UserError, match='does not exist'):
    list(documents.iter_documents([str(tmp_path / 'nope.txt')], data_config))
  (tmp_path / 'x.jsonl').write_text('{"text": 1}\n')
  with pytest.raises(UserError, match='no string field "text"'):
    list(documents.iter_documents([str(tmp_path / 'x.jsonl')], data_config))
  (tmp_path / 'y.jsonl').write_text('{not json\n')
  with pytest.raises(UserError, match='not valid JSON'):
    list(documents.iter_documents([str(tmp_path / 'y.jsonl')], data_config))
