"""Export segment embeddings with their metadata, in chunks, for use outside vidseek.

Two layouts, both read by common tools:

- ``npy`` (clip-retrieval's, read by autofaiss / embedding-reader / ``clip-retrieval index``):
  ``OUT/img_emb/img_emb_0000.npy`` (float32 ``[n, D]``) beside ``OUT/metadata/metadata_0000.parquet``
  (the same ``n`` segments, rows in the same order), one pair per chunk;
- ``parquet``: ``OUT/segments_0000.parquet`` per chunk, the metadata columns plus ``embedding``,
  a fixed-size list of ``D`` float32.

Metadata columns: ``segment_id``, ``video_id``, ``path``, ``title``, ``start``, ``end`` (seconds).
Every parquet file carries the embedding space in its schema metadata (``vidseek.embedding_key``).

The catalog is read by keyset pagination on the segment id, a page at a time, so memory is bounded
by one chunk whatever the catalog's size. The files are written to a sibling folder that is renamed
to ``OUT`` once complete: a failed export leaves no partial ``OUT`` behind. Segments ingested or
deleted while the export runs may or may not be in it; none is exported twice.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from search.video_store import SegmentRows, VideoStore

FORMATS = ("npy", "parquet")
DEFAULT_CHUNK_SIZE = 100_000
PAGE_SIZE = 8192  # segments per catalog query
SPACE_METADATA_KEY = b"vidseek.embedding_key"


class ExportError(ValueError):
    """The export cannot start: a bad destination, format or chunk size."""


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote: ``segments`` rows of ``dim`` floats in ``files`` (paths inside ``out``)."""

    out: Path
    embedding_key: str
    segments: int
    dim: int
    files: list[Path]


def check_destination(out: Path) -> None:
    """``out`` must not exist, or be an empty folder: an export never mixes with other files."""
    if out.is_dir():
        if any(out.iterdir()):
            raise ExportError(f"{out} is a folder that is not empty: export to a new or empty folder")
    elif out.exists() or out.is_symlink():
        raise ExportError(f"{out} exists and is not a folder: export to a new or empty folder")
    elif not out.parent.is_dir():
        raise ExportError(f"{out.parent} does not exist")


def iter_chunks(store: VideoStore, embedding_key: str, chunk_size: int) -> Iterator[SegmentRows]:
    """The segments of ``embedding_key`` in id order, ``chunk_size`` at a time (the last one fewer).

    Each page's vectors are copied into one chunk buffer as they arrive, so a chunk costs its
    vectors once (not once per page plus once concatenated)."""
    last = 0
    while True:
        pages: list[SegmentRows] = []
        buffer: np.ndarray | None = None  # float32 [chunk_size, D]; untouched rows take no memory
        have = 0
        while have < chunk_size:
            page = store.segment_rows(embedding_key, last, min(PAGE_SIZE, chunk_size - have))
            if page is None:
                break
            if buffer is None:
                buffer = np.empty((chunk_size, page.embeddings.shape[1]), np.float32)
            rows = slice(have, have + len(page))
            buffer[rows] = page.embeddings
            pages.append(replace(page, embeddings=buffer[rows]))
            have, last = have + len(page), int(page.ids[-1])
        if buffer is not None:
            yield _concat(pages, buffer[:have])
        if have < chunk_size:  # the catalog ran out
            return


def _concat(pages: list[SegmentRows], embeddings: np.ndarray) -> SegmentRows:
    """One chunk of ``pages``, whose vectors ``embeddings`` already holds in order."""
    return SegmentRows(
        ids=np.concatenate([p.ids for p in pages]),
        video_ids=np.concatenate([p.video_ids for p in pages]),
        starts=np.concatenate([p.starts for p in pages]),
        ends=np.concatenate([p.ends for p in pages]),
        paths=[x for p in pages for x in p.paths],
        titles=[x for p in pages for x in p.titles],
        embeddings=embeddings,
    )


def metadata_table(rows: SegmentRows, embedding_key: str) -> pa.Table:
    """The metadata columns of ``rows``, tagged with their embedding space."""
    table = pa.table({
        "segment_id": pa.array(rows.ids, pa.int64()),
        "video_id": pa.array(rows.video_ids, pa.int64()),
        "path": pa.array(rows.paths, pa.string()),
        "title": pa.array(rows.titles, pa.string()),
        "start": pa.array(rows.starts, pa.float64()),
        "end": pa.array(rows.ends, pa.float64()),
    })
    return table.replace_schema_metadata({SPACE_METADATA_KEY: embedding_key.encode()})


def _write_npy(folder: Path, index: str, rows: SegmentRows, embedding_key: str) -> list[Path]:
    emb = Path("img_emb") / f"img_emb_{index}.npy"
    meta = Path("metadata") / f"metadata_{index}.parquet"
    np.save(folder / emb, np.ascontiguousarray(rows.embeddings, np.float32))
    pq.write_table(metadata_table(rows, embedding_key), folder / meta)
    return [emb, meta]


def _write_parquet(folder: Path, index: str, rows: SegmentRows, embedding_key: str) -> list[Path]:
    name = Path(f"segments_{index}.parquet")
    flat = pa.array(np.ascontiguousarray(rows.embeddings, np.float32).ravel(), pa.float32())
    embeddings = pa.FixedSizeListArray.from_arrays(flat, rows.embeddings.shape[1])
    table = metadata_table(rows, embedding_key)
    table = table.append_column("embedding", embeddings).replace_schema_metadata(table.schema.metadata)
    pq.write_table(table, folder / name)
    return [name]


_WRITERS = {"npy": _write_npy, "parquet": _write_parquet}


def export_segments(
    store: VideoStore,
    embedding_key: str,
    out: Path,
    fmt: str = "npy",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """Write every segment of ``embedding_key`` to ``out`` in layout ``fmt``; ``progress`` is called
    with the number of segments of each chunk written. Nothing is written when there are none."""
    if fmt not in _WRITERS:
        raise ExportError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if chunk_size < 1:
        raise ExportError(f"chunk size must be at least 1, not {chunk_size}")
    check_destination(out)
    total = store.count_segments(embedding_key)
    # Names sort in chunk order (as embedding-reader reads them) at any chunk count.
    width = max(4, len(str(max(0, -(-total // chunk_size) - 1))))
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    files: list[Path] = []
    count, dim = 0, 0
    try:
        for number, rows in enumerate(iter_chunks(store, embedding_key, chunk_size)):
            if not files:
                staging.mkdir()
                if fmt == "npy":
                    (staging / "img_emb").mkdir()
                    (staging / "metadata").mkdir()
            files += _WRITERS[fmt](staging, f"{number:0{width}d}", rows, embedding_key)
            count, dim = count + len(rows), rows.embeddings.shape[1]
            if progress is not None:
                progress(len(rows))
        if files:
            os.replace(staging, out)  # replaces an empty folder; ``out`` is complete or absent
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return ExportReport(out, embedding_key, count, dim, files)
