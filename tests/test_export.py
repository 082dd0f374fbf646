"""``vidseek export``: segment embeddings and metadata written in chunks (clip-retrieval's npy layout,
or parquet), read back with numpy and pyarrow and compared with the catalog row by row."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from indexer.cli import EXPORT_CHUNK_SIZE, EXPORT_FORMATS
from indexer.service import open_catalog, settings_space_key
from search import export as export_module
from search.catalog import Catalog, SegmentRecord
from search.db import upgrade
from search.export import DEFAULT_CHUNK_SIZE, FORMATS, ExportError, export_segments
from search.settings import Settings
from tests.conftest import REPO, settings_env, temporary_database

KEY = "export-space"
DIM = 8


def _fill(catalog: Catalog, segments_per_video: list[int], key: str = KEY, seed: int = 0) -> None:
    """One video per entry of ``segments_per_video``, with that many random segments in space ``key``."""
    rng = np.random.default_rng(seed)
    for v, n in enumerate(segments_per_video):
        video = catalog.get_or_create_video(Path(f"/media/{key}/clip {v}.mp4"), hashlib.sha256(f"{key}/{seed}/{v}".encode()).hexdigest(), 1)
        records = [SegmentRecord(i, 2.0 * i, 2.0 * i + 1.5, 4, None, rng.standard_normal(DIM).astype(np.float32))
                   for i in range(n)]
        catalog.replace_segments(video.id, records, key)


def _catalog_rows(catalog: Catalog, key: str = KEY) -> list[tuple]:
    """(segment id, video id, path, title, start, end, embedding) of every segment of ``key``, by id,
    read through the ORM (not through the export's query)."""
    videos, _ = catalog.list_videos(limit=1000)
    rows = [(s.id, v.id, v.path, v.title, s.start, s.end, np.frombuffer(s.embedding, "<f4"))
            for v in videos for s in catalog.segments_of(v.id) if s.embedding_key == key]
    return sorted(rows, key=lambda r: r[0])


def _read_back(out: Path, fmt: str) -> list[tuple[dict[str, list], np.ndarray]]:
    """Each chunk of an export, in file-name order: (metadata columns, embeddings float32 [n, D])."""
    if fmt == "npy":
        embeddings = sorted((out / "img_emb").iterdir())
        metadata = sorted((out / "metadata").iterdir())
        assert [p.name.replace("img_emb", "metadata").replace(".npy", ".parquet") for p in embeddings] == \
            [p.name for p in metadata]
        assert sorted(p.name for p in out.iterdir()) == ["img_emb", "metadata"]
        chunks = []
        for e, m in zip(embeddings, metadata):
            table = pq.read_table(m)
            assert table.schema.metadata[b"vidseek.embedding_key"] == KEY.encode()
            chunks.append((table.to_pydict(), np.load(e)))
        return chunks
    chunks = []
    for path in sorted(out.iterdir()):
        assert path.name.startswith("segments_") and path.suffix == ".parquet"
        table = pq.read_table(path)
        assert table.schema.metadata[b"vidseek.embedding_key"] == KEY.encode()
        assert table.schema.field("embedding").type.list_size == DIM
        columns = table.drop_columns(["embedding"]).to_pydict()
        flat = table.column("embedding").combine_chunks().flatten().to_numpy()
        chunks.append((columns, flat.reshape(len(table), DIM)))
    return chunks


def _assert_matches_catalog(chunks: list[tuple[dict[str, list], np.ndarray]], expected: list[tuple]) -> None:
    got = []
    for columns, embeddings in chunks:
        assert embeddings.dtype == np.float32 and embeddings.shape == (len(columns["segment_id"]), DIM)
        assert list(columns) == ["segment_id", "video_id", "path", "title", "start", "end"]
        got += [(*row, vector) for row, vector in zip(zip(*columns.values()), embeddings)]
    assert len(got) == len(expected)
    for row, want in zip(got, expected):
        assert row[:6] == want[:6]
        np.testing.assert_array_equal(row[6], want[6])


def _written(folder: Path) -> list[str]:
    """What is in ``folder`` besides the SQLite catalog's files."""
    return [p.name for p in folder.iterdir() if not p.name.startswith("catalog.db")]


@pytest.fixture()
def catalog(tmp_path: Path) -> Catalog:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url)
    return Catalog(url)


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_export_reads_back_as_the_catalog_row_by_row(catalog: Catalog, tmp_path: Path, fmt: str) -> None:
    _fill(catalog, [3, 5, 1])
    _fill(catalog, [4], key="another-space", seed=1)  # other spaces stay out
    catalog.delete_video(1)  # deleted segments are not exported
    out = tmp_path / "out"
    report = export_segments(catalog, KEY, out, fmt)
    expected = _catalog_rows(catalog)
    assert len(expected) == 6 and report.segments == 6 and report.dim == DIM
    chunks = _read_back(out, fmt)
    assert len(chunks) == 1 and len(report.files) == (2 if fmt == "npy" else 1)
    _assert_matches_catalog(chunks, expected)


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_a_small_chunk_size_splits_the_export_covering_every_segment_once(
    catalog: Catalog, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "PAGE_SIZE", 2)  # chunks span several catalog pages
    _fill(catalog, [4, 6, 3])
    written = []
    report = export_segments(catalog, KEY, tmp_path / "out", fmt, chunk_size=5, progress=written.append)
    chunks = _read_back(tmp_path / "out", fmt)
    assert [len(c[1]) for c in chunks] == [5, 5, 3] == written
    ids = [i for c in chunks for i in c[0]["segment_id"]]
    assert ids == sorted(set(ids)) and report.segments == 13
    _assert_matches_catalog(chunks, _catalog_rows(catalog))
    if fmt == "npy":
        assert [p.name for p in sorted((tmp_path / "out" / "img_emb").iterdir())] == \
            ["img_emb_0000.npy", "img_emb_0001.npy", "img_emb_0002.npy"]


def test_an_empty_library_writes_nothing(catalog: Catalog, tmp_path: Path) -> None:
    _fill(catalog, [2], key="another-space")
    report = export_segments(catalog, KEY, tmp_path / "out", "npy")
    assert report.segments == 0 and report.files == []
    assert _written(tmp_path) == []  # no OUT, no staging folder


def test_a_bad_destination_is_refused_and_left_alone(catalog: Catalog, tmp_path: Path) -> None:
    _fill(catalog, [2])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    for out, reason in ((busy, "is a folder that is not empty"), (a_file, "exists and is not a folder"),
                        (tmp_path / "no" / "out", "does not exist")):
        with pytest.raises(ExportError, match=reason):
            export_segments(catalog, KEY, out, "npy")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"] and a_file.read_text() == "mine"
    with pytest.raises(ExportError, match="chunk size"):
        export_segments(catalog, KEY, tmp_path / "out", "npy", chunk_size=0)
    with pytest.raises(ExportError, match="unknown format"):
        export_segments(catalog, KEY, tmp_path / "out", "csv")
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is a fine destination
    assert export_segments(catalog, KEY, empty, "parquet").segments == 2
    assert [p.name for p in empty.iterdir()] == ["segments_0000.parquet"]


def test_a_failed_export_leaves_no_partial_output(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(catalog, [6])
    calls = []

    def failing(folder: Path, index: str, rows, key: str) -> list[Path]:
        calls.append(index)
        if len(calls) == 2:
            raise OSError("disk full")
        return export_module._write_parquet(folder, index, rows, key)

    monkeypatch.setitem(export_module._WRITERS, "parquet", failing)
    with pytest.raises(OSError, match="disk full"):
        export_segments(catalog, KEY, tmp_path / "out", "parquet", chunk_size=4)
    assert calls == ["0000", "0001"]
    assert _written(tmp_path) == []


@pytest.mark.services
def test_export_from_postgresql(tmp_path: Path) -> None:
    with temporary_database("vidseek_export") as url:
        upgrade(url)
        catalog = Catalog(url)
        try:
            _fill(catalog, [3, 4])
            report = export_segments(catalog, KEY, tmp_path / "out", "parquet", chunk_size=3)
            chunks = _read_back(tmp_path / "out", "parquet")
            assert report.segments == 7 and [len(c[1]) for c in chunks] == [3, 3, 1]
            _assert_matches_catalog(chunks, _catalog_rows(catalog))
        finally:
            catalog.dispose()


def test_the_command_line_offers_the_formats_and_chunk_size_of_the_export() -> None:
    assert (EXPORT_FORMATS, EXPORT_CHUNK_SIZE) == (FORMATS, DEFAULT_CHUNK_SIZE)


def _vidseek(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indexer.cli", *args], cwd=REPO, env=settings_env(settings),
                          capture_output=True, text=True, timeout=300)


def test_the_export_command_end_to_end(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    empty = _vidseek(settings, "export", str(out))
    assert empty.returncode == 0, empty.stderr
    assert "nothing to export" in empty.stderr and not out.exists()

    catalog = open_catalog(settings)
    _fill(catalog, [2, 3], key=settings_space_key(settings))
    result = _vidseek(settings, "export", str(out), "--chunk-size", "2")
    assert result.returncode == 0, result.stderr
    assert "exported 5 segments" in result.stdout and "in 6 files" in result.stdout
    assert len(list((out / "img_emb").iterdir())) == 3
    metadata = pq.read_table(out / "metadata" / "metadata_0000.parquet").to_pydict()
    assert metadata["title"] == ["clip 0", "clip 0"] and metadata["start"] == [0.0, 2.0]

    refused = _vidseek(settings, "export", str(out), "--format", "parquet")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and "not empty" in refused.stderr and "Traceback" not in refused.stderr
    bad_chunk = _vidseek(settings, "export", str(tmp_path / "other"), "--chunk-size", "0")
    assert bad_chunk.returncode == 2 and "must be at least 1" in bad_chunk.stderr
