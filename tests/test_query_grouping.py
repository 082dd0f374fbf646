"""Segment hits -> videos with their moments (``search.query.group_by_video``), without an index."""

from __future__ import annotations

import numpy as np

from search.catalog import SegmentMeta
from search.query import EXTRA_MOMENTS, group_by_video


def test_each_video_gets_its_best_moment_and_up_to_three_more() -> None:
    # Video 1 has six segment hits, video 2 two; segment 99 was deleted since the index refreshed.
    meta = {sid: SegmentMeta(sid, 1, float(sid), float(sid) + 1, None) for sid in range(6)}
    meta |= {10: SegmentMeta(10, 2, 0.0, 1.0, None), 11: SegmentMeta(11, 2, 1.0, 2.0, None)}
    ids = np.array([0, 10, 99, 1, 2, 3, 4, 11, 5])
    scores = np.linspace(0.9, 0.1, len(ids))
    grouped = dict(group_by_video(scores, ids, meta, k=10))
    assert EXTRA_MOMENTS == 3
    assert [m.segment_id for m in grouped[1]] == [0, 1, 2, 3]  # the best plus up to 3 more, best first
    assert [m.segment_id for m in grouped[2]] == [10, 11]
    assert [vid for vid, _ in group_by_video(scores, ids, meta, k=1)] == [1]
