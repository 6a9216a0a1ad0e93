"""Concatenate-then-split packing of tokenised documents, a chunk of documents at a time.

The same rows as Grain's `ConcatThenSplitIterDataset` (the tests compare the two):
the documents form one token stream, cut every `seq_len` tokens; within a row the
pieces of documents are segments 1, 2, ... with positions restarting at 0, and a
document cut at a row's end continues as a new segment of the next row. The last
row of a finite stream is padded with segment id 0.

Why not Grain's: it handles one document per Python step, several times over
(prefetch future, stats, slicing objects), which bounds the loader at about one
document per 100 µs of one core — at the embedded corpus's ~70 tokens a document,
about 450k tokens/s, less than one H100 step of gpt2_124m wants. Here the parent
yields chunks of documents (read and tokenised together in Grain's threads, where
SentencePiece releases the GIL), and a row is a few NumPy slice copies.

The iterator state is where the next row starts: the parent's state before the
chunk holding that token, the document's index in the chunk, and the token offset
in it. Restoring re-reads one chunk; nothing else is replayed.
"""
import grain
import numpy as np

from configs.errors import DataStateMismatch

STATE_KEYS = {'chunk_parent', 'document', 'offset', 'documents_per_chunk'}


class PackedRowsIterDataset(grain.IterDataset):
  """Parent elements: lists of 1-D int32 token arrays (BOS ... EOS), one per document.
  Elements: rows of `inputs`, `targets` (inputs shifted by one), `segment_ids`
  (0 = padding) and `positions`, each (seq_len,) int32."""

  def __init__(self, parent, seq_len, documents_per_chunk):
    super().__init__(parent)
    self.seq_len = seq_len
    self.documents_per_chunk = documents_per_chunk  # recorded in the state: the parent's
    #   position counts chunks, so a state only means the same place under the same size

  def __iter__(self):
    return _PackedRowsIterator(self._parent.__iter__(), self.seq_len, self.documents_per_chunk)

  def __str__(self):
    return f'PackedRowsIterDataset(seq_len={self.seq_len})'


class _PackedRowsIterator(grain.DatasetIterator):

  def __init__(self, parent, seq_len, documents_per_chunk):
    super().__init__(parent)
    self.seq_len = seq_len
    self.documents_per_chunk = documents_per_chunk
    self._chunk = None  # the documents being read; None until the first is needed
    self._chunk_parent = parent.get_state()  # the parent's state before that chunk
    self._document = 0
    self._offset = 0  # tokens of the current document already packed (as inputs)
    self._arange = np.arange(seq_len, dtype=np.int32)

  def _current_document(self):
    """The document at the read position (loading chunks as needed), or None at the end."""
    while self._chunk is None or self._document >= len(self._chunk):
      state = self._parent.get_state()
      try:
        chunk = next(self._parent)
      except StopIteration:
        return None
      self._chunk, self._chunk_parent, self._document, self._offset = chunk, state, 0, 0
    return self._chunk[self._document]

  def __next__(self):
    length = self.seq_len
    inputs = np.zeros(length, np.int32)
    targets = np.zeros(length, np.int32)
    segment_ids = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    filled, segment, visited = 0, 0, False
    while True:
      ids = self._current_document()
      if ids is None:
        break
      left = len(ids) - 1 - self._offset  # a document of n ids has n - 1 inputs
      if left <= 0:  # an empty document ([EOS] alone) takes a segment id and no token,
        segment, visited = segment + 1, True  # also in a full row, as Grain's packer
        self._document, self._offset = self._document + 1, 0
        continue
      if filled == length:
        break
      take = min(left, length - filled)
      end, start = filled + take, self._offset
      inputs[filled:end] = ids[start:start + take]
      targets[filled:end] = ids[start + 1:start + take + 1]
      segment, visited = segment + 1, True
      segment_ids[filled:end] = segment
      positions[filled:end] = self._arange[:take]
      filled, self._offset = end, start + take
      if take == left:
        self._document, self._offset = self._document + 1, 0
    if not visited:
      raise StopIteration
    return {'inputs': inputs, 'targets': targets, 'segment_ids': segment_ids,
            'positions': positions}

  def get_state(self):
    if self._chunk is not None and self._document >= len(self._chunk):
      # At a chunk's end: name the next chunk, so a restore does not re-read this one.
      return {'chunk_parent': self._parent.get_state(), 'document': 0, 'offset': 0,
              'documents_per_chunk': self.documents_per_chunk}
    return {'chunk_parent': self._chunk_parent, 'document': self._document,
            'offset': self._offset, 'documents_per_chunk': self.documents_per_chunk}

  def set_state(self, state):
    check_state(state, self.documents_per_chunk)
    self._parent.set_state(state['chunk_parent'])
    self._chunk_parent, self._chunk = state['chunk_parent'], None
    self._document, self._offset = 0, 0
    if state['document'] or state['offset']:
      self._chunk = next(self._parent)  # the chunk the saved position is in, read again
      self._document, self._offset = state['document'], state['offset']


def check_state(state, documents_per_chunk):
  """Raises DataStateMismatch unless `state` is this packer's, for this chunk size."""
  if not isinstance(state, dict) or set(state) != STATE_KEYS:
    raise DataStateMismatch(
        'the checkpoint holds a data-iterator state of another loader version (keys '
        f'{sorted(state) if isinstance(state, dict) else type(state).__name__})')
  if state['documents_per_chunk'] != documents_per_chunk:
    raise DataStateMismatch(
        f"the checkpoint's data position counts chunks of {state['documents_per_chunk']} "
        f'documents and this loader reads {documents_per_chunk}')
