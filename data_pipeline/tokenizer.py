"""SentencePiece tokenizer: training, loading, and the reserved special tokens.

Choices, made once here:
- byte fallback, so no input is ever <unk> (rare CJK characters, emoji, U+FFFD
  become UTF-8 byte pieces);
- identity normalisation, no dummy prefix and no whitespace folding, so
  decode(encode(s)) == s exactly (NFKC would fold full-width CJK punctuation);
- control symbols for the chat roles: they have reserved ids, and encoding
  plain text can never produce them, so user text cannot forge a turn.
"""
import collections
import hashlib
import io
import os

import sentencepiece as spm

from configs.errors import UserError
from engine import paths

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
CHAT_TOKENS = ('<|system|>', '<|user|>', '<|assistant|>', '<|end_of_turn|>')
MODEL_FILE = 'tokenizer.model'
MAX_LINE_BYTES = 4096


class Tokenizer:
  """A loaded SentencePiece model plus the ids the rest of the code relies on."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self.sp.get_piece_size()
    # From the model itself: an imported LLaMA tokenizer has unk 0, BOS 1, EOS 2
    # and no pad; ours has pad 0, unk 1, BOS 2, EOS 3.
    self.unk_id, self.bos_id, self.eos_id = self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()
    self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.unk_id
    self.chat_ids = {name: self.sp.piece_to_id(name) for name in CHAT_TOKENS}
    self.fingerprint = hashlib.sha256(model_proto).hexdigest()[:16]

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def encode_batch(self, texts) -> list[list[int]]:
    return self.sp.encode(list(texts))

  def decode(self, ids) -> str:
    return self.sp.decode([int(i) for i in ids])

  def piece(self, token_id: int) -> str:
    return self.sp.id_to_piece(int(token_id))


def _training_lines(documents, max_sentences):
  """Lines of the documents: SentencePiece learns pieces within a line."""
  count = 0
  for doc in documents:
    for line in doc.split('\n'):
      if line.strip():
        for piece in split_long_line(line):
          yield piece
          count += 1
          if count >= max_sentences:
            return


def split_long_line(line, limit=MAX_LINE_BYTES):
  """A line in pieces of at most `limit` UTF-8 bytes, cut at spaces where there are
  any: SentencePiece skips (or cuts) longer sentences, so a corpus of long lines
  would otherwise train on a fraction of its text."""
  data = line.encode('utf-8')
  while len(data) > limit:
    cut = data.rfind(b' ', 0, limit + 1)
    if cut <= 0:
      cut = limit
      while cut > 0 and data[cut] & 0xC0 == 0x80:  # never inside a character
        cut -= 1
    yield data[:cut].decode('utf-8')
    data = data[cut:].lstrip(b' ')
  if data:
    yield data.decode('utf-8')


def auto_character_coverage(lines, vocab_size, target=0.9995):
  """The coverage that keeps at most half the vocab for single characters.

  A CJK corpus has thousands of distinct characters; with a small vocab,
  covering them all would leave no room for merges. Characters past the budget
  are rare and fall back to byte pieces.
  """
  counts = collections.Counter()
  for line in lines:
    counts.update(line)
  total = sum(counts.values())
  budget = max(1, (vocab_size - len(CHAT_TOKENS) - 4 - 256) // 2)
  covered = 0
  for rank, (_, count) in enumerate(counts.most_common()):
    if rank >= budget or covered / total >= target:
      break
    covered += count
  # SentencePiece keeps characters until the covered fraction reaches this value,
  # and accepts values in [0.98, 1] only (a tiny vocab on CJK text then fails
  # with its own "vocab too small" message).
  return max(0.98, min(target, covered / total - 1e-9))


def train_tokenizer(documents, tok_config) -> Tokenizer:
  """Trains on an iterator of documents and returns the tokenizer (not yet saved)."""
  lines = list(_training_lines(documents, tok_config.max_sentences))
  coverage = tok_config.character_coverage or auto_character_coverage(
      lines, tok_config.vocab_size)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=tok_config.vocab_size,
        model_type=tok_config.model_type,
        character_coverage=coverage,
        normalization_rule_name='identity' if tok_config.normalization == 'identity' else 'nfkc',
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        byte_fallback=True,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        control_symbols=list(CHAT_TOKENS),
        max_sentence_length=MAX_LINE_BYTES,
        hard_vocab_limit=True,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
  except RuntimeError as e:
    message = str(e).splitlines()[-1] if str(e) else repr(e)
    if 'Vocabulary size' in message or 'vocab_size' in message:
      raise UserError(f'tokenizer.vocab_size={tok_config.vocab_size} does not fit this corpus '
                      f'({message.strip()}); choose a vocab size the corpus supports') from None
    raise UserError(f'SentencePiece training failed: {message.strip()}') from None
  return Tokenizer(model.getvalue())


def save_tokenizer(tokenizer: Tokenizer, directory: str):
  # never a half-written model; bytes, because SentencePiece cannot open gs:// paths
  paths.write_atomic(os.path.join(directory, MODEL_FILE), tokenizer.model_proto)


def tokenizer_path(workdir, tok_config):
  return tok_config.path or os.path.join(workdir, 'tokenizer', MODEL_FILE)


def load_tokenizer(path: str, expected_vocab_size: int | None = None) -> Tokenizer:
  """Loads a trained model; a missing file or a vocab mismatch is a UserError."""
  if not paths.isfile(path):
    raise UserError(f'no tokenizer at {path}; run `python run.py tokenizer` with this workdir '
                    'first or set tokenizer.path')
  proto = paths.read_bytes(path)
  try:
    tokenizer = Tokenizer(proto)
  except Exception:  # sentencepiece raises plain RuntimeError/OSError on a bad proto
    raise UserError(f'{path} is not a SentencePiece model; retrain it with '
                    '`python run.py tokenizer`') from None
  if expected_vocab_size is not None and tokenizer.vocab_size != expected_vocab_size:
    raise UserError(f'tokenizer {path} has {tokenizer.vocab_size} pieces but model.vocab_size='
                    f'{expected_vocab_size}; set model.vocab_size and tokenizer.vocab_size to '
                    f'{tokenizer.vocab_size} or retrain the tokenizer')
  return tokenizer
