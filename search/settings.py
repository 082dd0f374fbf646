"""Typed, environment-driven configuration (12-factor).

Every knob of vidseek is read once, here, from ``VIDSEEK_*`` environment variables into
one frozen :class:`Settings` object that is passed down explicitly. Nothing deeper in the
code reads the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

ENCODERS = ("full", "tempme")
SUMMARIES = ("none", "holitom", "vqtoken")
INDEX_TYPES = ("flat", "ivf", "hnsw")


class SettingsError(ValueError):
    """A ``VIDSEEK_*`` variable holds a value vidseek cannot use."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vidseek"


@dataclass(frozen=True)
class Settings:
    """All configuration of a vidseek process.

    Build it with :meth:`from_env`; tests build it directly or with :meth:`with_overrides`.
    """

    data_dir: Path = field(default_factory=_default_data_dir)
    database_url: str = ""  # "" -> SQLite file in data_dir
    broker_url: str = ""  # "" -> tasks run in-process (no broker)
    task_queue: str = "vidseek"  # Celery queue name
    media_roots: tuple[Path, ...] = ()  # () -> the working directory
    model: str = "ViT-B-32"
    pretrained: str = "openai"  # open_clip tag, a checkpoint path, or "random"
    model_config_dir: Path | None = None  # extra open_clip model configs (*.json)
    device: str = "auto"
    encoder: str = "full"
    tempme_weights: Path | None = None  # trained TempMe checkpoint (optional; training-free without)
    summary: str = "none"  # compressed token summary per video, for reranking
    summary_retain: float = 0.10  # HoliTom retain ratio
    summary_chunk_frames: int = 256  # summaries are computed over chunks of this many frames
    frame_dedup: float = 0.0  # B-VLLM-style static-frame dropping before the ViT; 0 = off, 0.15 recommended
    sample_fps: float = 1.0
    segment_frames: int = 12
    max_frames: int = 3600  # uniform sub-sampling above this many sampled frames per video
    batch_segments: int = 4
    index_dir: Path | None = None  # None -> data_dir / "index"
    index_type: str = "flat"
    index_refresh_seconds: float = 2.0
    search_candidates: int = 200
    api_key: str = ""
    max_upload_mb: int = 2048
    log_level: str = "INFO"
    log_format: str = "json"

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise SettingsError(f"VIDSEEK_ENCODER must be one of {ENCODERS}, got {self.encoder!r}")
        if self.summary not in SUMMARIES:
            raise SettingsError(f"VIDSEEK_SUMMARY must be one of {SUMMARIES}, got {self.summary!r}")
        if self.index_type not in INDEX_TYPES:
            raise SettingsError(f"VIDSEEK_INDEX_TYPE must be one of {INDEX_TYPES}, got {self.index_type!r}")
        if self.sample_fps <= 0:
            raise SettingsError("VIDSEEK_SAMPLE_FPS must be > 0")
        if not 0.0 < self.summary_retain <= 1.0:
            raise SettingsError("VIDSEEK_SUMMARY_RETAIN must be in (0, 1]")
        if self.frame_dedup < 0:
            raise SettingsError("VIDSEEK_FRAME_DEDUP must be >= 0 (0 turns it off)")
        if self.segment_frames < 1 or self.max_frames < 1 or self.batch_segments < 1:
            raise SettingsError("VIDSEEK_SEGMENT_FRAMES, VIDSEEK_MAX_FRAMES and VIDSEEK_BATCH_SEGMENTS must be >= 1")

    # ----- derived locations -------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'catalog.db'}"

    @property
    def resolved_index_dir(self) -> Path:
        return self.index_dir or self.data_dir / "index"

    @property
    def thumbnail_dir(self) -> Path:
        return self.data_dir / "thumbnails"

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def summary_dir(self) -> Path:
        return self.data_dir / "summaries"

    @property
    def samples_dir(self) -> Path:
        return self.data_dir / "samples"

    @property
    def allowed_media_roots(self) -> tuple[Path, ...]:
        """Roots ingestion may read from: the configured ones (default: the working directory)
        plus vidseek's own upload and sample folders."""
        roots = self.media_roots or (Path.cwd(),)
        return tuple(dict.fromkeys(p.resolve() for p in (*roots, self.upload_dir, self.samples_dir)))

    @property
    def runs_in_process(self) -> bool:
        return not self.broker_url

    def with_overrides(self, **changes: object) -> "Settings":
        return replace(self, **changes)

    # ----- environment -------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read every ``VIDSEEK_<FIELD>`` variable (upper-cased field name) that is set."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"VIDSEEK_{f.name.upper()}")
            if raw is None or raw == "" and f.name not in ("api_key", "broker_url", "database_url"):
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, annotation: object, raw: str) -> object:
    kind = str(annotation)
    try:
        if kind.startswith("tuple[Path"):
            return tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p)
        if "Path" in kind:
            return Path(raw).expanduser()
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise SettingsError(f"VIDSEEK_{name.upper()}={raw!r} is not a valid {kind}") from exc
    return raw
