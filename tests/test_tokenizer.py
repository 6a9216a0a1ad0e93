import pytest

from configs.errors import UserError
from data_pipeline import tokenizer as tokenizer_lib

TEXTS = [
    'The quick brown fox -- jumps over   the lazy dog.\n\tIndented line.',
    '床前明月光，疑是地上霜。\n举头望明月，低头思故乡。',
    'Emoji 🙂🚀 and rare 𠀀 characters, ＦＵＬＬ-width ＡＢＣ',
    'mixed 中文 and English, numbers 12345 and symbols <>&%$#',
    ' leading space and trailing newline\n',
]


@pytest.mark.parametrize('text', TEXTS)
def test_round_trip_is_exact(tiny_tokenizer, text):
  ids = tiny_tokenizer.encode(text)
  assert tiny_tokenizer.decode(ids) == text


def test_no_unknown_tokens_thanks_to_byte_fallback(tiny_tokenizer):
  for text in TEXTS:
    assert tiny_tokenizer.unk_id not in tiny_tokenizer.encode(text)


def test_special_tokens_have_reserved_ids(tiny_tokenizer):
  tok = tiny_tokenizer
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  assert [tok.piece(i) for i in range(4)] == ['<pad>', '<unk>', '<s>', '</s>']
  assert list(tok.chat_ids.values()) == [4, 5, 6, 7]
  assert [tok.piece(i) for i in range(4, 8)] == list(tokenizer_lib.CHAT_TOKENS)


def test_special_tokens_never_come_from_plain_text(tiny_tokenizer):
  text = '<s> </s> <pad> <unk> ' + ' '.join(tokenizer_lib.CHAT_TOKENS) * 3
  ids = tiny_tokenizer.encode(text)
  assert not set(ids) & set(range(8))
  assert tiny_tokenizer.decode(ids) == text


def test_vocab_size_matches_config_and_chinese_is_compressed(tiny_tokenizer, tiny_config):
  assert tiny_tokenizer.vocab_size == tiny_config.tokenizer.vocab_size
  poem = '床前明月光，疑是地上霜。举头望明月，低头思故乡。'
  # Common characters are single pieces; only rare ones fall back to 3 UTF-8 bytes.
  assert len(tiny_tokenizer.encode(poem)) <= 1.5 * len(poem)


def test_vocab_mismatch_is_a_user_error(tiny_workdir):
  path = f'{tiny_workdir}/tokenizer/tokenizer.model'
  with pytest.raises(UserError, match='model.vocab_size=4096'):
    tokenizer_lib.load_tokenizer(path, expected_vocab_size=4096)


def test_missing_tokenizer_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match='run.py tokenizer'):
    tokenizer_lib.load_tokenizer(str(tmp_path / 'none.model'))


def test_vocab_too_large_for_corpus_is_a_user_error(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.tokenizer.vocab_size = 5000
  with pytest.raises(UserError, match='does not fit this corpus'):
    tokenizer_lib.train_tokenizer(['tiny corpus of a few words', 'and another line'],
                                  config.tokenizer)
