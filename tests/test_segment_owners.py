"""The segment -> video map kept beside the FAISS index (``search.segment_owners``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.segment_owners import OWNERS_FILE, UNKNOWN, SegmentOwners


def test_lookups_follow_additions_replacements_and_removals() -> None:
    owners = SegmentOwners(np.array([5, 1, 3]), np.array([50, 10, 30]))
    owners.add(np.array([7, 3]), np.array([70, 31]))  # 3 is added again: the latest video wins
    assert owners.videos_of(np.array([3, 1, 2, 7, 5, 100, -4])).tolist() == [31, 10, UNKNOWN, 70, 50, UNKNOWN, UNKNOWN]
    owners.remove([1, 7, 42])
    assert len(owners) == 2
    assert owners.videos_of(np.array([1, 3, 5, 7])).tolist() == [UNKNOWN, 31, 50, UNKNOWN]
    ids, videos = owners.items()
    assert ids.tolist() == [3, 5] and videos.tolist() == [31, 50]


def test_an_empty_map_knows_no_segment() -> None:
    assert SegmentOwners().videos_of(np.array([1, 2])).tolist() == [UNKNOWN, UNKNOWN]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    owners = SegmentOwners(np.array([2, 9]), np.array([1, 4]))
    owners.save(tmp_path)
    loaded = SegmentOwners.load(tmp_path)
    assert loaded is not None and loaded.videos_of(np.array([9, 2, 3])).tolist() == [4, 1, UNKNOWN]
    (tmp_path / OWNERS_FILE).write_bytes(b"not a numpy file")
    assert SegmentOwners.load(tmp_path) is None
    assert SegmentOwners.load(tmp_path / "absent") is None
