"""Token ids → text deltas for streaming, never cutting a character or a stop string.

The tokenizer falls back to UTF-8 byte pieces, so one Chinese character can be three
tokens; decoding the first one or two alone gives U+FFFD. The whole answer is
decoded again at each token (answers are at most a context long) and text is only
sent up to the last complete character, and never into what may be the start of a
stop string, so a client never sees a broken character or a stop string's prefix
that is then taken back.
"""

REPLACEMENT = '\ufffd'


class TextStream:
  def __init__(self, tokenizer, stop=()):
    self.tokenizer = tokenizer
    self.stop = [s for s in stop if s]
    self.ids = []
    self.text = ''
    self.sent = 0  # characters of self.text already handed out
    self.stopped = False  # a stop string was generated: the answer ends before it

  def add(self, token_id):
    """The new text that is safe to send after this token ('' when none)."""
    self.ids.append(int(token_id))
    text = self.tokenizer.decode(self.ids)
    hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
    if hits:
      self.text, self.stopped = text[:min(hits)], True
      return self._take(len(self.text))
    self.text = text
    safe = len(text)
    while safe > self.sent and text[safe - 1] == REPLACEMENT:
      safe -= 1  # maybe the first bytes of a character still being generated
    for s in self.stop:
      for k in range(min(len(s) - 1, len(text)), 0, -1):
        if text.endswith(s[:k]):
          safe = min(safe, len(text) - k)
          break
    return self._take(safe)

  def flush(self):
    """Everything not yet sent (the answer has ended)."""
    return self._take(len(self.text))

  def _take(self, end):
    delta = self.text[self.sent:max(end, self.sent)]
    self.sent = max(end, self.sent)
    return delta
