"""Engine requests seen from asyncio: the engine thread's events land in one
asyncio queue; leaving the loop early (client gone, stop string, error) cancels
every request still running, which frees its slot before the next decode step."""
import asyncio

from serving.engine import QueueFull
from serving.engine import Request
from serving.request_checks import ApiError


class Choices:
  """n engine requests (one per choice) whose events come out of `events()` as
  (choice index, kind, data)."""

  def __init__(self, engine, prompts, http_request=None, **request_kwargs):
    loop = asyncio.get_running_loop()
    self._queue = asyncio.Queue()
    self._http_request = http_request
    seed = request_kwargs.pop('seed', None)
    self.requests = []
    for index, ids in enumerate(prompts):
      def on_event(kind, data, index=index):
        loop.call_soon_threadsafe(self._queue.put_nowait, (index, kind, data))
      self.requests.append(Request(ids, on_event=on_event,
                                   seed=None if seed is None else seed + index,
                                   **request_kwargs))
    self._open = set(range(len(self.requests)))
    try:
      for request in self.requests:
        engine.submit(request)
    except QueueFull as e:
      self.cancel_all()
      raise ApiError(str(e), status=503, kind='server_busy') from None

  def cancel(self, index):
    self.requests[index].cancel()

  def cancel_all(self):
    for request in self.requests:
      request.cancel()

  async def events(self):
    try:
      while self._open:
        try:
          index, kind, data = await asyncio.wait_for(self._queue.get(), timeout=0.5)
        except asyncio.TimeoutError:
          if self._http_request is not None and await self._http_request.is_disconnected():
            return
          continue
        if kind in ('done', 'error'):
          self._open.discard(index)
        yield index, kind, data
    finally:  # also when the consumer stops early (client gone, error)
      self.cancel_all()
