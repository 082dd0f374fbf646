"""Retrieval metrics (indexer/evaluation/metrics.py) on hand-computed matrices, with CLIP4Clip's
tie and multi-sentence semantics, and the annotation parsers (indexer/evaluation/annotations.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.evaluation.annotations import (
    AnnotationError,
    load_annotations,
    resolve_videos,
)
from indexer.evaluation.metrics import (
    compute_metrics,
    diagonal_ranks,
    group_by_video,
    retrieval_metrics,
    text_to_video_metrics,
    video_to_text_sim,
)


def test_compute_metrics_without_ties() -> None:
    sim = np.array([[0.9, 0.1, 0.5], [0.8, 0.3, 0.7], [0.2, 0.6, 0.4]])
    # row 0: nothing above 0.9 -> rank 0; row 1: 0.8, 0.7 above 0.3 -> 2; row 2: 0.6 above 0.4 -> 1
    assert diagonal_ranks(sim).tolist() == [0, 2, 1]
    m = compute_metrics(sim)
    assert (m.r1, m.r5, m.r10, m.median_rank, m.mean_rank, m.count) == pytest.approx((100 / 3, 100, 100, 2, 2, 3))
    # columns: 0.9 top -> 0; 0.3 below 0.6 -> 1; 0.4 below 0.5 and 0.7 -> 2
    assert diagonal_ranks(sim.T).tolist() == [0, 1, 2]


def test_compute_metrics_counts_every_position_a_tie_occupies() -> None:
    """CLIP4Clip's compute_metrics finds ranks where the sorted row equals the correct score, so
    a tie adds one entry per tied position and the metrics average over entries, not rows."""
    sim = np.array([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7], [0.3, 0.3, 0.3]])
    assert diagonal_ranks(sim).tolist() == [0, 1, 0, 1, 0, 1, 2]
    m = compute_metrics(sim)
    assert m.count == 7
    assert m.r1 == pytest.approx(300 / 7)
    assert m.median_rank == 2.0  # sorted entries 0 0 0 1 1 1 2 -> middle 1 -> rank 2
    assert m.mean_rank == pytest.approx(5 / 7 + 1)


def test_compute_metrics_drops_rows_whose_correct_score_is_not_finite() -> None:
    sim = np.array([[1.0, 0.0, 0.0], [0.0, np.nan, 0.0], [0.5, 0.0, -np.inf]])
    assert diagonal_ranks(sim).tolist() == [0]
    with pytest.raises(ValueError, match="no valid rank"):
        compute_metrics(np.full((2, 2), np.nan))


def test_median_of_an_even_count_is_the_mean_of_the_middle_pair() -> None:
    sim = np.array([[0.9, 0.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.9, 0.0], [0.9, 0.8, 0.7, 0.1]])
    assert diagonal_ranks(sim).tolist() == [0, 1, 0, 3]
    assert compute_metrics(sim).median_rank == 1.5


# Six captions of three videos, interleaved: caption q describes video CAPTION_VIDEO[q].
MULTI_SIM = np.array(
    [
        [0.9, 0.2, 0.6],  # video 0: its column is on top -> rank 0
        [0.5, 0.6, 0.4],  # video 2: below 0.5 and 0.6 -> rank 2
        [0.3, 0.95, 0.3],  # video 0: below 0.95, tied with column 2 (higher index) -> rank 1
        [0.7, 0.7, 0.1],  # video 1: tied with column 0 (lower index ranks first) -> rank 1
        [0.2, 0.1, 0.6],  # video 2 -> rank 0
        [0.1, 0.9, 0.2],  # video 1 -> rank 0
    ]
)
CAPTION_VIDEO = np.array([0, 2, 0, 1, 2, 1])


def test_grouping_captions_per_video_pads_with_minus_infinity() -> None:
    grouped = group_by_video(np.arange(8.0).reshape(4, 2), np.array([1, 0, 1, 1]))
    assert grouped.shape == (2, 3, 2)
    np.testing.assert_array_equal(grouped[0, 0], [2.0, 3.0])
    assert np.all(np.isneginf(grouped[0, 1:]))
    np.testing.assert_array_equal(grouped[1], [[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]])
    with pytest.raises(ValueError, match="at least one caption"):
        group_by_video(np.zeros((2, 3)), np.array([0, 1]))


def test_text_to_video_multi_sentence() -> None:
    m = text_to_video_metrics(group_by_video(MULTI_SIM, CAPTION_VIDEO))
    # ranks 0 2 1 1 0 0
    assert m.count == 6
    assert (m.r1, m.r5, m.r10) == pytest.approx((50.0, 100.0, 100.0))
    assert m.mean_rank == pytest.approx(4 / 6 + 1)
    # torch.median's lower middle of 0 0 0 1 1 2 is 0 (numpy would say 0.5)
    assert m.median_rank == 1.0


def test_video_to_text_multi_sentence_uses_each_videos_best_caption() -> None:
    best = video_to_text_sim(group_by_video(MULTI_SIM, CAPTION_VIDEO))
    # best[j, i]: best caption of video i against video j
    np.testing.assert_allclose(best, [[0.9, 0.7, 0.5], [0.95, 0.9, 0.6], [0.6, 0.2, 0.6]])
    m = compute_metrics(best)
    # video 0 -> 0; video 1: 0.95 above 0.9 -> 1; video 2: tie with 0.6 -> entries 0 and 1
    assert m.count == 4
    assert (m.r1, m.median_rank, m.mean_rank) == pytest.approx((50.0, 1.5, 1.5))


def test_retrieval_metrics_picks_the_protocol() -> None:
    multi = retrieval_metrics(MULTI_SIM, CAPTION_VIDEO)
    assert multi.multi_sentence
    assert multi.text_to_video.r1 == 50.0 and multi.video_to_text.r1 == 50.0
    assert multi.rsum == pytest.approx(500.0)
    assert multi.as_dict()["rsum"] == pytest.approx(500.0)

    sim = np.array([[0.9, 0.1, 0.5], [0.8, 0.3, 0.7], [0.2, 0.6, 0.4]])
    shuffled = np.array([2, 0, 1])  # caption q describes video shuffled[q]
    single = retrieval_metrics(sim[shuffled], shuffled)
    assert not single.multi_sentence
    assert single.text_to_video == compute_metrics(sim)
    assert single.video_to_text == compute_metrics(sim.T)
    with pytest.raises(ValueError, match="finite"):
        retrieval_metrics(np.array([[np.nan]]), np.array([0]))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12).flatmap(lambda v: st.tuples(st.permutations(range(v * v)), st.permutations(range(v)))))
def test_without_ties_both_protocols_agree_on_ranks(case: tuple[list[int], list[int]]) -> None:
    """With distinct scores a row's rank is its count of higher scores, whichever protocol."""
    scores, order = case
    v = len(order)
    sim = np.array(scores, dtype=np.float64).reshape(v, v) / (v * v)
    np.testing.assert_array_equal(diagonal_ranks(sim), np.sum(sim > np.diag(sim)[:, None], axis=1))
    caption_video = np.array(order)
    grouped = text_to_video_metrics(group_by_video(sim[caption_video], caption_video))
    single = compute_metrics(sim)
    assert (grouped.r1, grouped.r5, grouped.r10, grouped.mean_rank) == pytest.approx(
        (single.r1, single.r5, single.r10, single.mean_rank)
    )


# ----- annotations --------------------------------------------------------------------------
def test_msrvtt_csv_reads_video_id_and_sentence_columns(tmp_path: Path) -> None:
    path = tmp_path / "MSRVTT_JSFUSION_test.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        writer.writerow(["ret0", "msr7960", "video7960", "a man, then a woman, talk"])
        writer.writerow(["ret1", "msr7961", "video7961", "a cat plays"])
    ann = load_annotations(path)
    assert ann.format == "msrvtt-csv"
    assert [(c.video_id, c.text) for c in ann.captions] == [
        ("video7960", "a man, then a woman, talk"),
        ("video7961", "a cat plays"),
    ]
    assert ann.video_ids == ("video7960", "video7961") and ann.caption_video_index() == [0, 1]

    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\nv1,hello\n")
    with pytest.raises(AnnotationError, match="video_id and sentence"):
        load_annotations(bad)
    with pytest.raises(AnnotationError, match="MSR-VTT JSON annotations only"):
        load_annotations(path, split="test")


def test_msrvtt_json_keeps_every_caption_and_filters_by_split(tmp_path: Path) -> None:
    data = {
        "videos": [{"video_id": "video0", "split": "train"}, {"video_id": "video9", "split": "test"}],
        "sentences": [
            {"video_id": "video9", "caption": "a dog runs", "sen_id": 0},
            {"video_id": "video0", "caption": "a car drives", "sen_id": 1},
            {"video_id": "video9", "caption": "a puppy is running", "sen_id": 2},
        ],
    }
    path = tmp_path / "MSRVTT_data.json"
    path.write_text(json.dumps(data))
    every = load_annotations(path)
    assert every.format == "msrvtt-json" and every.video_ids == ("video9", "video0")
    assert every.caption_video_index() == [0, 1, 0]
    test = load_annotations(path, split="test")
    assert [c.text for c in test.captions] == ["a dog runs", "a puppy is running"]
    with pytest.raises(AnnotationError, match="no video with split 'val'"):
        load_annotations(path, split="val")


def test_paragraph_formats_join_a_videos_sentences(tmp_path: Path) -> None:
    didemo = tmp_path / "test_data.json"
    didemo.write_text(
        json.dumps(
            [
                {"video": "a.mp4", "description": "a girl jumps", "times": [[0, 0]]},
                {"video": "b.mov", "description": "a boat", "times": [[1, 2]]},
                {"video": "a.mp4", "description": "she lands", "times": [[1, 1]]},
            ]
        )
    )
    ann = load_annotations(didemo)
    assert ann.format == "didemo"
    assert [(c.video_id, c.text) for c in ann.captions] == [("a.mp4", "a girl jumps she lands"), ("b.mov", "a boat")]

    anet = tmp_path / "val_1.json"
    entry = {"duration": 10.0, "timestamps": [[0, 5], [5, 10]], "sentences": ["A man cooks.", " He eats."]}
    anet.write_text(json.dumps({"v_abc": entry}))
    ann = load_annotations(anet)
    assert ann.format == "activitynet"
    assert [(c.video_id, c.text) for c in ann.captions] == [("abc", "A man cooks.  He eats.")]

    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"hello": 1}))
    with pytest.raises(AnnotationError, match="unrecognised"):
        load_annotations(odd)
    with pytest.raises(AnnotationError, match="does not exist"):
        load_annotations(tmp_path / "missing.csv")


def test_videos_are_found_by_name_or_stem(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("video1.webm", "video1.mp4", "sub/video2.webm", "a.mov", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = resolve_videos(("video1", "video2", "a.mov"), tmp_path)
    assert found == {
        "video1": (tmp_path / "video1.mp4").resolve(),
        "video2": (tmp_path / "sub" / "video2.webm").resolve(),
        "a.mov": (tmp_path / "a.mov").resolve(),
    }
    with pytest.raises(AnnotationError, match=r"2 of 3 annotated videos are not in .*: notes, video3"):
        resolve_videos(("video1", "notes", "video3"), tmp_path)
