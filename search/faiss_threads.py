"""FAISS searches on one warm OpenMP team per process.

An OpenMP team belongs to the thread that starts it: each of gunicorn's request threads would own a
team of its own, whose helper threads sleep between that thread's rare searches and are slow to
wake (measured on the served 1M snapshot, a search split over 2 threads: 1.9 ms when every search
runs on one thread, 2.1-2.3 ms when four pool threads take turns, 2.9 ms on one thread; inside the
server the split gained nothing at all). So the searches that use more than one thread are run on a
single thread of the process, whose team stays the same and warm. The searches of one index are
serialised by its lock anyway. A forked child (a Celery or gunicorn worker) starts its own thread
on its first search.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import faiss

T = TypeVar("T")

_lock = threading.Lock()
_searcher: ThreadPoolExecutor | None = None


def _forget_searcher() -> None:
    """In a forked child: the parent's search thread does not exist here; the next search starts one."""
    global _searcher, _lock
    _searcher, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_searcher)


def _with_threads(threads: int, search: Callable[[], T]) -> T:
    faiss.omp_set_num_threads(threads)  # OpenMP's thread count is per calling thread
    return search()


def run_search(threads: int, search: Callable[[], T]) -> T:
    """``search()`` on the process's search thread with FAISS using ``threads`` OpenMP threads there,
    waiting for it; its result or exception comes back here."""
    global _searcher
    with _lock:
        if _searcher is None:
            _searcher = ThreadPoolExecutor(1, thread_name_prefix="vidseek-faiss")
        searcher = _searcher
    return searcher.submit(_with_threads, threads, search).result()
