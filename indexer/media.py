"""Finding video files on disk and identifying them by content."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from search.media_paths import is_video_name


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes (streamed; the identity of a video in the catalog)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def find_videos(paths: Iterable[Path]) -> Iterator[Path]:
    """Files given directly (any extension), plus video files found recursively in folders, sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and is_video_name(p))
        else:
            yield path
