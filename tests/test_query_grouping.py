"""Segment hits -> videos with their moments (``search.query.group_by_video``), without an index."""

from __future__ import annotations

import numpy as np

from search.query import EXTRA_MOMENTS, group_by_video
from search.segment_owners import UNKNOWN


def test_each_video_gets_its_best_moment_and_up_to_three_more() -> None:
    # Hits best first: video 1 has six segment hits, video 2 two; the third hit's segment is not in the
    # index's map (deleted since it refreshed).
    videos = np.array([1, 2, UNKNOWN, 1, 1, 1, 1, 2, 1])
    grouped = dict(group_by_video(videos, k=10))
    assert EXTRA_MOMENTS == 3
    assert grouped[1] == [0, 3, 4, 5]  # positions of the best plus up to 3 more, best first
    assert grouped[2] == [1, 7]
    assert [vid for vid, _ in group_by_video(videos, k=1)] == [1]
    assert group_by_video(np.array([UNKNOWN]), k=3) == []
