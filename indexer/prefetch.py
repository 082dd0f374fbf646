"""Run an iterator on a producer thread, a bounded number of items ahead of its consumer.

Ingestion decodes, resizes and crops frames on such a thread while the encoder runs on the
previous batch (PyAV and torch release the GIL). The queue bounds memory whatever the video's
length; an exception in the producer is raised again, the same object, in the consumer; and
leaving the ``with`` block -- the stream consumed, or the job failed or cancelled -- stops the
producer and joins it, so no thread outlives its job.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


class Prefetcher(Generic[T]):
    """``with Prefetcher(make_iterator, depth) as items: for item in items: ...``

    ``make_iterator`` is called on the producer thread (a generator's setup -- opening the file --
    runs there too). At most ``depth`` items wait in the queue. A producer stopped early leaves
    at its next item: for a decoder, after the frame it is decoding.
    """

    def __init__(self, make_iterator: Callable[[], Iterator[T]], depth: int, name: str = "vidseek-prefetch"):
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self._make_iterator = make_iterator
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)

    def __enter__(self) -> Prefetcher[T]:
        return self.start()

    def start(self) -> Prefetcher[T]:
        """Start the producer (``with`` does it); :meth:`close` must follow."""
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the producer and wait for its thread to end (items not consumed are dropped)."""
        self._stop.set()
        while self._thread.is_alive():
            try:  # make room, in case the producer waits on a full queue
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(_POLL_SECONDS)

    def _produce(self) -> None:
        try:
            items = self._make_iterator()
            try:
                for item in items:
                    if not self._put(item):
                        return
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()  # a generator's finally blocks run here, on this thread
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 -- handed to the consumer, raised there
            self._put(_Failed(exc))

    def _put(self, item: object) -> bool:
        """Queue ``item``, waiting for room; False once the consumer has stopped us."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
