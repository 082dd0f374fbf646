"""The per-process text-encoding batcher: concurrent queries share one forward, each caller gets
its own query's embedding back, a failing forward raises in every caller of its batch, and no
thread is left behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from indexer.service import text_encoder
from models.backbone import ClipBackbone
from search.settings import Settings
from search.text_batcher import TextBatcher

TEXTS = [f"{subject} {action}" for subject in ("a dog", "a red car", "snow", "two people")
         for action in ("running", "at night")]


def _queued(batcher: TextBatcher, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(batcher._pending) < n:
        assert time.monotonic() < deadline, "callers did not queue"
        time.sleep(0.001)


def test_concurrent_callers_share_forwards_and_each_get_their_own_embedding(tiny_backbone: ClipBackbone) -> None:
    release = threading.Event()
    shapes: list[int] = []

    def encode(texts: Sequence[str]) -> np.ndarray:
        shapes.append(len(texts))
        if len(shapes) == 1:
            release.wait(30)  # hold the first forward until every other caller has queued
        return tiny_backbone.encode_text(texts).numpy()

    batcher = TextBatcher(encode, max_batch=32, max_wait=0.002)
    threads_before = set(threading.enumerate())
    with ThreadPoolExecutor(len(TEXTS)) as pool:
        first = pool.submit(batcher, TEXTS[0])
        while not shapes:
            time.sleep(0.001)
        rest = [pool.submit(batcher, text) for text in TEXTS[1:]]
        _queued(batcher, len(TEXTS) - 1)
        release.set()
        results = [first.result(), *(f.result() for f in rest)]
    assert shapes == [1, len(TEXTS) - 1]  # the seven that queued during the first forward shared one
    assert (batcher.batches, batcher.texts) == (2, len(TEXTS))
    for text, got in zip(TEXTS, results):
        torch.testing.assert_close(torch.from_numpy(got), tiny_backbone.encode_text([text])[0], atol=1e-5, rtol=1e-4)
    assert set(threading.enumerate()) <= threads_before | set(pool._threads)  # the batcher started none

    # many rounds of free-running callers: every one still gets its own text's embedding
    singles = {t: tiny_backbone.encode_text([t])[0] for t in TEXTS}
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(batcher, TEXTS * 6))
    for text, vector in zip(TEXTS * 6, got):
        torch.testing.assert_close(torch.from_numpy(vector), singles[text], atol=1e-5, rtol=1e-4)
    assert batcher.texts == 7 * len(TEXTS)


def test_a_failing_forward_raises_in_every_caller_of_its_batch_and_the_next_batch_runs() -> None:
    release = threading.Event()
    calls: list[list[str]] = []

    def encode(texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        if len(calls) == 1:
            release.wait(30)
            return np.ones((len(texts), 4), np.float32)
        if any("bad" in t for t in texts):
            raise RuntimeError("text tower failed")
        return np.full((len(texts), 4), 2.0, np.float32)

    batcher = TextBatcher(encode, max_wait=0)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher, "first")
        while not calls:
            time.sleep(0.001)
        failing = [pool.submit(batcher, text) for text in ("bad one", "good two", "good three")]
        _queued(batcher, 3)
        release.set()
        assert first.result().tolist() == [1.0] * 4
        for future in failing:  # the three shared the failing forward: each sees its error
            with pytest.raises(RuntimeError, match="text tower failed"):
                future.result()
    assert batcher("good again").tolist() == [2.0] * 4  # the lead was passed on: the batcher still works


def test_a_batcher_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        TextBatcher(lambda texts: np.zeros((len(texts), 1)), max_batch=0)


def test_the_service_batches_unless_the_batch_size_is_one(settings: Settings, tiny_backbone: ClipBackbone) -> None:
    assert isinstance(text_encoder(settings, tiny_backbone), TextBatcher)
    single = text_encoder(settings.with_overrides(text_batch_max=1), tiny_backbone)
    assert not isinstance(single, TextBatcher)
    torch.testing.assert_close(torch.from_numpy(single("a dog")), tiny_backbone.encode_text(["a dog"])[0])
