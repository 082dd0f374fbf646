"""Retrieval benchmark annotations -> :class:`Annotations` (captions per video id).

Formats, as CLIP4Clip's data loaders (``dataloaders/dataloader_*_retrieval.py``) read them:

* ``msrvtt-csv``: a CSV with a header holding ``video_id`` and ``sentence`` columns, one row per
  caption -- MSR-VTT's 1k-A test split ``MSRVTT_JSFUSION_test.csv`` (1000 rows, one caption per
  video; its other columns are ignored).
* ``msrvtt-json``: ``{"videos": [{"video_id", "split", ...}], "sentences": [{"video_id",
  "caption"}, ...]}`` -- ``MSRVTT_data.json``, 20 captions per video; ``split`` (e.g. ``test``)
  keeps the videos whose ``split`` field has that value.
* ``didemo``: a JSON list of ``{"video", "description", "times"}`` (``test_data.json``); the
  descriptions of a video are joined with spaces into one paragraph (video-paragraph retrieval,
  as CLIP4Clip evaluates DiDeMo). Video ids are file names.
* ``activitynet``: ``{"v_<id>": {"duration", "timestamps", "sentences": [...]}}``
  (``val_1.json``); sentences joined into one paragraph, the id is the key without its ``v_``.

Videos are found in a folder by file name or by file stem (``<video_id>.mp4``, then any other
video extension, as CLIP4Clip falls back from ``.mp4`` to ``.webm``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from indexer.media import find_videos

FORMATS = ("msrvtt-csv", "msrvtt-json", "didemo", "activitynet")


class AnnotationError(ValueError):
    """The annotation file cannot be used as given; the message says why."""


@dataclass(frozen=True)
class Caption:
    video_id: str
    text: str


@dataclass(frozen=True)
class Annotations:
    """Captions in file order; a video may have several (multi-sentence evaluation)."""

    captions: tuple[Caption, ...]
    format: str

    @property
    def video_ids(self) -> tuple[str, ...]:
        """Distinct video ids in order of first appearance."""
        return tuple(dict.fromkeys(c.video_id for c in self.captions))

    def caption_video_index(self) -> list[int]:
        """Index into :attr:`video_ids` of each caption's video."""
        position = {v: i for i, v in enumerate(self.video_ids)}
        return [position[c.video_id] for c in self.captions]


def _annotations(captions: list[Caption], fmt: str, path: Path) -> Annotations:
    if not captions:
        raise AnnotationError(f"{path} holds no captions")
    return Annotations(tuple(captions), fmt)


def read_msrvtt_csv(path: Path) -> Annotations:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"video_id", "sentence"} - set(reader.fieldnames or ())
        if missing:
            raise AnnotationError(
                f"{path} needs a header with columns video_id and sentence (missing: {', '.join(sorted(missing))})"
            )
        captions = [Caption(row["video_id"].strip(), row["sentence"].strip()) for row in reader]
    return _annotations(captions, "msrvtt-csv", path)


def parse_msrvtt_json(data: dict, path: Path, split: str | None = None) -> Annotations:
    keep: set[str] | None = None
    if split is not None:
        keep = {v["video_id"] for v in data.get("videos", []) if v.get("split") == split}
        if not keep:
            raise AnnotationError(f"{path} has no video with split {split!r}")
    captions = [
        Caption(str(s["video_id"]), str(s["caption"]).strip())
        for s in data["sentences"]
        if keep is None or s["video_id"] in keep
    ]
    return _annotations(captions, "msrvtt-json", path)


def parse_didemo(data: list, path: Path) -> Annotations:
    paragraphs: dict[str, list[str]] = {}
    for item in data:
        paragraphs.setdefault(str(item["video"]), []).append(str(item["description"]))
    return _annotations([Caption(v, " ".join(parts)) for v, parts in paragraphs.items()], "didemo", path)


def parse_activitynet(data: dict, path: Path) -> Annotations:
    captions = [Caption(key.removeprefix("v_"), " ".join(item["sentences"])) for key, item in data.items()]
    return _annotations(captions, "activitynet", path)


def json_format(data: object) -> str | None:
    """Which of the JSON formats ``data`` has, or None."""
    if isinstance(data, dict) and "sentences" in data:
        return "msrvtt-json"
    if isinstance(data, list) and data and all(isinstance(d, dict) and {"video", "description"} <= d.keys() for d in data):
        return "didemo"
    if isinstance(data, dict) and data and all(isinstance(d, dict) and "sentences" in d for d in data.values()):
        return "activitynet"
    return None


def load_annotations(path: Path, split: str | None = None) -> Annotations:
    """Read ``path`` in whichever of :data:`FORMATS` it is (from its extension and JSON shape).

    Raises:
        AnnotationError: missing file, unknown shape, no captions, or ``split`` given for a
            format that has no splits.
    """
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist")
    data: object = None
    if path.suffix.lower() == ".csv":
        fmt: str | None = "msrvtt-csv"
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AnnotationError(f"{path} is neither a CSV (by extension) nor JSON: {exc}") from exc
        fmt = json_format(data)
        if fmt is None:
            raise AnnotationError(f"{path}: unrecognised annotation JSON (expected one of {', '.join(FORMATS)})")
    if split is not None and fmt != "msrvtt-json":
        raise AnnotationError(f"--split applies to MSR-VTT JSON annotations only, not {fmt}")
    if fmt == "msrvtt-csv":
        return read_msrvtt_csv(path)
    if fmt == "msrvtt-json":
        return parse_msrvtt_json(data, path, split)  # type: ignore[arg-type]
    if fmt == "didemo":
        return parse_didemo(data, path)  # type: ignore[arg-type]
    return parse_activitynet(data, path)  # type: ignore[arg-type]


def resolve_videos(video_ids: tuple[str, ...], folder: Path) -> dict[str, Path]:
    """Map each video id to a file under ``folder`` (recursively; resolved to an absolute path):
    an exact file name first, then a file stem, preferring ``.mp4`` among files sharing a stem.

    Raises:
        AnnotationError: some ids have no file (the first few are named).
    """
    if not folder.is_dir():
        raise AnnotationError(f"video folder {folder} does not exist")
    by_name: dict[str, Path] = {}
    by_stem: dict[str, Path] = {}
    for path in sorted(find_videos([folder]), key=lambda p: (p.suffix.lower() != ".mp4", str(p))):
        by_name.setdefault(path.name, path)
        by_stem.setdefault(path.stem, path)
    found = {v: by_name.get(v) or by_stem.get(v) for v in video_ids}
    missing = [v for v, p in found.items() if p is None]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise AnnotationError(f"{len(missing)} of {len(video_ids)} annotated videos are not in {folder}: {shown}")
    return {v: p.resolve() for v, p in found.items() if p is not None}
