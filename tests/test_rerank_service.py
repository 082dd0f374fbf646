"""Reranking orchestration without HTTP: ordering rules, the rerank_k bound, fallbacks, the LLM time
limit, and the evenly spaced frames ingestion hands to the video LLM."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.frames import PreparedFrame, UniformFramePicker
from models.rerankers.late import LateParams
from models.rerankers.llava import LazyLlm, LlmUnavailableError, ScoreOutput
from models.rerankers.prefill import PrefillOutput
from models.summary import VideoSummary, summarize
from search.catalog import Catalog, SegmentRecord, SummaryRecord
from search.db import upgrade
from search.rerank_service import (
    Candidate,
    LateReranker,
    LlmReranker,
    RerankOutcome,
    RerankService,
    Rescored,
    rerank_order,
)

CANDIDATES = [Candidate(1, 0.9, 0, 10), Candidate(2, 0.8, 0, 10), Candidate(3, 0.7, 0, 10), Candidate(4, 0.6, 0, 10)]


class FixedReranker:
    """Returns preset verdicts (or a fallback) and records what it was handed."""

    def __init__(self, scores: dict[int, float], same_scale: bool, fallback: str | None = None):
        self.name, self.same_scale, self.fallback = "fixed", same_scale, fallback
        self.scores, self.seen = scores, []

    def rescore(self, query, vector, candidates):
        self.seen = [c.video_id for c in candidates]
        return RerankOutcome({v: Rescored(s) for v, s in self.scores.items() if v in self.seen}, self.fallback, {"score": 1.0})


def test_same_scale_scores_compete_with_first_stage_scores() -> None:
    order = rerank_order(CANDIDATES, {1: Rescored(0.5), 3: Rescored(0.95)}, same_scale=True)
    assert [CANDIDATES[i].video_id for i in order] == [3, 2, 4, 1]  # 2 and 4 keep 0.8 and 0.6


def test_other_scales_put_rescored_videos_first_then_first_stage_order() -> None:
    order = rerank_order(CANDIDATES, {4: Rescored(0.2), 2: Rescored(0.9), 3: Rescored(0.2)}, same_scale=False)
    assert [CANDIDATES[i].video_id for i in order] == [2, 3, 4, 1]  # ties (3, 4) keep first-stage order


def test_service_reranks_only_the_top_k_and_reports() -> None:
    fixed = FixedReranker({2: 0.99, 3: 0.1, 4: 5.0}, same_scale=True)
    result = RerankService({"late": fixed}, "late", k=3).rerank("late", "q", np.zeros(4), CANDIDATES)
    assert fixed.seen == [1, 2, 3]  # candidate 4 is beyond rerank_k: never handed over, stays last
    assert result.order == [1, 0, 2, 3]
    assert result.info.candidates == 3 and result.info.rescored == 2 and result.info.without_summary == [1]
    assert not result.info.fallback and set(result.timings_ms) == {"rerank", "rerank_score"}


def test_hits_beyond_rerank_k_keep_their_first_stage_order() -> None:
    """Several candidates lie beyond ``k``: they follow the reranked head, in first-stage order."""
    candidates = [*CANDIDATES, Candidate(5, 0.5, 0, 10), Candidate(6, 0.4, 0, 10)]
    fixed = FixedReranker({1: 0.1, 2: 0.9, 4: 9.0, 5: 9.0, 6: 9.0}, same_scale=True)
    result = RerankService({"late": fixed}, "late", k=2).rerank("late", "q", np.zeros(4), candidates)
    assert fixed.seen == [1, 2]
    assert result.order == [1, 0, 2, 3, 4, 5]


def test_fallbacks_keep_the_first_stage_order_and_say_why() -> None:
    failing = FixedReranker({1: 1.0}, same_scale=False, fallback="too slow")
    service = RerankService({"llm": failing}, "none", k=10, unavailable={"other": "not configured here"})
    result = service.rerank("llm", "q", np.zeros(4), CANDIDATES)
    assert result.order == [0, 1, 2, 3] and result.scores == {} and result.info.fallback and result.info.reason == "too slow"
    missing = service.rerank("other", "q", np.zeros(4), CANDIDATES)
    assert missing.info.fallback and missing.info.reason == "not configured here" and missing.order == [0, 1, 2, 3]


class _Records:
    """A catalog stand-in that has a 2-token LLM summary for every video."""

    def summaries(self, ids, key, space):
        summary = VideoSummary(torch.zeros(2, 2), torch.ones(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                               torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                               torch.zeros(1, dtype=torch.float64), 2, "holitom")
        return {i: SummaryRecord("holitom", 2, summary.to_bytes(), space, key) for i in ids}


class SlowModel:
    """Scores one batch every ``seconds``; counts the batches it was asked for."""

    def __init__(self, seconds: float):
        self.seconds, self.batches = seconds, 0

    def visual_inputs(self, tokens):
        return torch.zeros(tokens.shape[0] + 1, 2)

    def prompt_embeddings(self, query):
        return torch.zeros(3, 2), torch.zeros(2, 2)

    def score(self, query, visuals):
        self.batches += 1
        time.sleep(self.seconds)
        n = torch.tensor([v.shape[0] for v in visuals])
        return ScoreOutput(torch.full((len(visuals),), 0.5), PrefillOutput(torch.zeros(len(visuals), 2), [], n + 5, n, n))


def test_llm_reranker_times_out_falls_back_and_stops_after_the_current_batch() -> None:
    model = SlowModel(seconds=0.3)
    reranker = LlmReranker(_Records(), "k", LazyLlm(lambda: model), timeout=0.05, batch_tokens=8)  # one video a batch
    outcome = reranker.rescore("q", np.zeros(4), CANDIDATES)
    assert outcome.scores == {} and "longer than 0.05 s" in outcome.fallback
    reranker.shutdown(wait=True)
    assert model.batches < len(CANDIDATES)


def test_llm_reranker_scores_every_candidate_in_token_bounded_batches() -> None:
    model = SlowModel(seconds=0.0)
    reranker = LlmReranker(_Records(), "k", LazyLlm(lambda: model), timeout=5, batch_tokens=16)  # two videos a batch
    outcome = reranker.rescore("q", np.zeros(4), CANDIDATES)
    assert outcome.fallback is None and set(outcome.scores) == {1, 2, 3, 4} and model.batches == 2
    assert outcome.details == {"visual_tokens": 12, "visual_tokens_after_merge": 12, "batches": 2}
    reranker.shutdown()


def test_llm_reranker_reports_an_unloadable_model_once_loaded_or_not() -> None:
    calls = []

    def broken():
        calls.append(1)
        raise LlmUnavailableError("no weights offline")

    reranker = LlmReranker(_Records(), "k", LazyLlm(broken), timeout=5, batch_tokens=100)
    for _ in range(2):
        outcome = reranker.rescore("q", np.zeros(4), CANDIDATES)
        assert "unavailable: no weights offline" in outcome.fallback
    assert calls == [1]  # the failure is remembered, not retried per request
    reranker.shutdown()


def frame(t: float) -> PreparedFrame:
    return PreparedFrame(t, 1, torch.zeros(1), np.zeros((1, 1, 3), np.uint8))


def test_uniform_frame_picker_spreads_instants_over_the_video() -> None:
    times = [float(t) for t in range(10)]
    picker = UniformFramePicker(times, 4)  # instants 0, 3, 6, 9
    kept = [t for t in times if t not in (5.0, 6.0)]  # 5 and 6 were folded into 4 by static-frame dropping
    assert [f.time for f in picker.tap(frame(t) for t in kept)] == kept
    assert [f.time for f in picker.frames()] == [0.0, 3.0, 4.0, 9.0]
    short = UniformFramePicker([0.0, 1.0], 32)
    list(short.tap(frame(t) for t in (0.0, 1.0)))
    assert [f.time for f in short.frames()] == [0.0, 1.0]


def test_lazy_llm_loads_once() -> None:
    loads = []
    lazy = LazyLlm(lambda: loads.append(1) or "model")
    assert lazy.get() == lazy.get() == "model" and loads == [1]


def test_lazy_llm_turns_an_unusable_model_into_unavailable() -> None:
    def load():
        raise ValueError("merge layer 18 >= the LLM's 4 layers")

    with pytest.raises(LlmUnavailableError, match="merge layer"):
        LazyLlm(load).get()


def test_late_reranker_caches_prepared_summaries_until_they_are_rewritten(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url)
    catalog = Catalog(url)
    video = catalog.get_or_create_video(Path("/m/v.mp4"), "a" * 64, 1)
    segment = [SegmentRecord(0, 0.0, 4.0, 4, None, np.ones(4, np.float32) / 2)]

    def store(tokens: torch.Tensor) -> None:
        s = summarize("holitom", tokens, torch.rand(4, 9), [0.0, 1.0, 2.0, 3.0], retain_ratio=1.0)
        catalog.replace_segments(video.id, segment, "space", summaries=[SummaryRecord(s.method, s.num_tokens, s.to_bytes())])

    projected = []

    def project(x: torch.Tensor) -> torch.Tensor:
        projected.append(x.shape[0])
        return x[:, :4]

    late = LateReranker(catalog, "space", project, LateParams(weight=1.0), 1.0)
    store(torch.zeros(4, 9, 8).index_fill_(2, torch.tensor([0]), 1.0))  # every token along axis 0
    query = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    first = late.rescore("q", query, [Candidate(video.id, 0.5, 0, 4)])
    again = late.rescore("q", query, [Candidate(video.id, 0.5, 0, 4)])
    assert len(projected) == 1 and first.scores == again.scores and first.scores[video.id].score == pytest.approx(1.0)
    store(torch.zeros(4, 9, 8).index_fill_(2, torch.tensor([1]), 1.0))  # re-ingested: now orthogonal to the query
    rewritten = late.rescore("q", query, [Candidate(video.id, 0.5, 0, 4)])
    assert len(projected) == 2 and rewritten.scores[video.id].score == pytest.approx(0.0, abs=1e-6)
    assert late.rescore("q", query, [Candidate(999, 0.5, 0, 4)]).scores == {}
    catalog.dispose()
