"""A fixed random token batch, so benchmarks time the step, not the loader."""
import numpy as np


def synthetic_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, t = config.train.batch_size, config.data.seq_len
  tokens = rng.integers(8, config.model.vocab_size, (b, t + 1)).astype(np.int32)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
          'segment_ids': np.ones((b, t), np.int32),
          'positions': np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()}
