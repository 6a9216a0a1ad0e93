"""The one timing loop the benchmarks share."""
import statistics
import time


def median_seconds(fn, steps):
  """Median wall time of `steps` calls of `fn` after one untimed warm-up call;
  `fn` must block until its work is done."""
  fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)
