"""One text-encoding batcher per process: concurrent queries share one forward of the text tower.

Under concurrent requests a process would otherwise run one text forward per request, each a
``[1, L]`` batch that keeps the CPU's matrix units half idle and that competes with the others for
the same cores. :class:`TextBatcher` gathers the texts that arrive while a forward runs (and, when
requests have been arriving together, up to ``max_wait`` seconds more) into one ``[B, L]`` forward
and hands every caller its own row.

It needs no thread of its own (leader/follower): the first caller to find no forward running
becomes the leader, collects the waiting texts, runs the forward and passes the lead on to the
next waiting caller, so nothing is left running when the process stops and a ``fork`` (gunicorn)
cannot inherit a half-started worker. A forward that raises raises in every caller of its batch.
A lone client never waits: the extra ``max_wait`` is spent only after a batch served several callers
(under load), so a single client's latency is that of its own forward.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

BatchEncoder = Callable[[Sequence[str]], np.ndarray]  # texts -> float32 [B, D], row i for texts[i]


@dataclass(eq=False)
class _Request:
    text: str
    ready: threading.Event = field(default_factory=threading.Event)  # result, error or the lead is here
    lead: bool = False
    result: np.ndarray | None = None
    error: BaseException | None = None


class TextBatcher:
    """Callable ``text -> embedding [D]`` that batches concurrent calls into ``encode_batch``.

    ``max_batch`` bounds the texts of one forward; ``max_wait`` (seconds) is how long a leader waits
    for more texts when the previous batch was shared (0: only the texts that queued up during the
    previous forward are batched).
    """

    def __init__(self, encode_batch: BatchEncoder, max_batch: int = 32, max_wait: float = 0.002):
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be >= 1 and max_wait >= 0")
        self.encode_batch, self.max_batch, self.max_wait = encode_batch, max_batch, max_wait
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._pending: list[_Request] = []
        self._leading = False  # a caller is collecting or running a batch
        self._shared = False  # the last batch served more than one caller
        self.batches = 0  # forwards run (for benchmarks and tests)
        self.texts = 0  # texts encoded by them

    def __call__(self, text: str) -> np.ndarray:
        request = _Request(text)
        with self._lock:
            self._pending.append(request)
            self._arrived.notify()
            if not self._leading:
                self._leading = request.lead = True
        if not request.lead:
            request.ready.wait()
        if request.lead and request.result is None and request.error is None:
            self._lead()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _lead(self) -> None:
        """Collect a batch (this caller's text first), run it, answer its callers, pass the lead on."""
        with self._lock:
            if self._shared and self.max_wait > 0:
                deadline = time.monotonic() + self.max_wait
                while len(self._pending) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._arrived.wait(left)
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        try:
            vectors = np.asarray(self.encode_batch([r.text for r in batch]), dtype=np.float32)
            if vectors.shape[0] != len(batch):
                raise RuntimeError(f"text encoder returned {vectors.shape[0]} rows for {len(batch)} texts")
            for request, vector in zip(batch, vectors):
                request.result = vector.copy()  # own memory: a caller may keep it (query cache)
        except BaseException as exc:  # every caller of the batch sees the failure
            for request in batch:
                request.error = exc
        finally:
            with self._lock:
                self.batches += 1
                self.texts += len(batch)
                self._shared = len(batch) > 1 or bool(self._pending)
                if self._pending:  # hand the lead to the oldest waiting caller
                    self._pending[0].lead = True
                    self._pending[0].ready.set()
                else:
                    self._leading = False
            for request in batch:
                request.ready.set()
