"""The serving engine's pieces without a server: per-row sampling, text deltas that
never cut a character or leak a stop string's start, prefill buckets."""
import jax
import jax.numpy as jnp
import numpy as np

from serving import steps
from serving.text_stream import TextStream


def test_rows_sample_by_their_own_settings_whoever_is_beside_them():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4))
  seeds = jnp.arange(4, dtype=jnp.uint32)
  sample = jax.jit(steps.sample_rows)
  def draw(temperature, top_p, count):
    return np.asarray(sample(logits, seeds, jnp.full(4, count, jnp.int32),
                             jnp.asarray(temperature, jnp.float32),
                             jnp.asarray(top_p, jnp.float32)))
  # row 0 greedy; rows 1-3 sample; row 2 with a nucleus that keeps only token 0
  draws = np.stack([draw([0, 1, 1, 1], [1, 1, 0.4, 1], c) for c in range(400)])
  assert (draws[:, 0] == 0).all() and (draws[:, 2] == 0).all()
  assert set(draws[:, 1]) == {0, 1, 2, 3}
  # a row's draws do not change when its neighbours ask for a nucleus cut or greedy
  alone = np.stack([draw([1, 1, 1, 1], [1, 1, 1, 1], c) for c in range(400)])
  np.testing.assert_array_equal(alone[:, 1], draws[:, 1])
  np.testing.assert_array_equal(alone[:, 3], draws[:, 3])
  assert abs((alone[:, 1] == 0).mean() - 0.5) < 0.08


class ByteTokenizer:
  """Each id is one UTF-8 byte, as byte-fallback pieces are."""
  def decode(self, ids):
    return bytes(ids).decode('utf-8', errors='replace')


def test_text_stream_sends_whole_characters_and_holds_back_stop_prefixes():
  stream = TextStream(ByteTokenizer())
  sent = [stream.add(b) for b in '好a'.encode('utf-8')]
  assert sent == ['', '', '好', 'a']
  stream = TextStream(ByteTokenizer(), stop=['END'])
  sent = [stream.add(b) for b in 'xyEN'.encode()]
  assert ''.join(sent) == 'xy' and not stream.stopped  # 'EN' may start the stop string
  assert stream.add(ord('D')) == '' and stream.stopped and stream.text == 'xy'
  stream = TextStream(ByteTokenizer(), stop=['END'])
  for b in 'xyENz'.encode():
    stream.add(b)
  assert stream.flush() == '' and stream.text == 'xyENz' and stream.sent == 5


def test_prefill_buckets_cover_every_length_once():
  assert steps.buckets(256, 16) == [16, 32, 64, 128, 256]
  assert steps.buckets(1000, 16)[-1] == 1000 and steps.buckets(8, 16) == [8]
