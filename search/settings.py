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

from models.registry import ENCODERS as ENCODER_REGISTRY
from models.registry import PRECISIONS, TEXT_RUNTIMES
from models.registry import RERANKERS as RERANKER_REGISTRY
from models.registry import SUMMARIZERS

# The choices come from the method registries (models.registry), which import no torch to list them.
ENCODERS = ENCODER_REGISTRY.names()
SUMMARIES = ("none", *SUMMARIZERS.names())
RERANKERS = RERANKER_REGISTRY.names()
LLM_SUMMARIES = SUMMARIZERS.names()
INDEX_TYPES = ("auto", "flat", "ivf", "ivfpq", "hnsw")
LIST_STORAGE = ("fp16", "fp32")  # VIDSEEK_INDEX_LISTS: search.vector_index.LIST_STORAGE
AUTO_DECODE_WORKERS = 2
AUTO_SEARCH_THREADS = 2
DECODE_MODES = ("fast", "exact")  # indexer.decode: skip non-reference frames when sampling sparsely, or decode all


def _usable_cpus(at_most: int) -> int:
    """The CPUs this process may run on, at most ``at_most`` (at least 1)."""
    return max(1, min(at_most, len(os.sched_getaffinity(0))))


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
    precision: str = "auto"  # auto | fp32 | bf16 | fp16: weights cast once at load (models/precision.py)
    text_runtime: str = "auto"  # auto | torch | onnx | onnx-int8: where query texts are encoded (models/text_onnx.py)
    encoder: str = "tempme"  # TempMe holds its numbers (docs/performance.md); "full" for plain CLIP
    tempme_weights: Path | None = None  # trained TempMe checkpoint (optional; training-free without)
    summary: str = "none"  # compressed token summary per video, for reranking
    summary_retain: float = 0.10  # HoliTom retain ratio
    summary_chunk_frames: int = 256  # summaries are computed over chunks of this many frames
    rerank: str = "auto"  # none | late | llm; auto = late when VIDSEEK_SUMMARY is set, else none
    rerank_k: int = 50  # first-stage video hits a reranker rescores
    rerank_timeout: float = 10.0  # seconds the llm reranker may take per request before the fallback
    rerank_weight: float = 0.5  # share of the late-interaction score in the late reranker's combined score
    llm_reranker: str = ""  # LLaVA-OneVision model id or local directory; "" = no llm reranker
    llm_summary: str = "holitom"  # how the LLM-space summary is compressed at ingestion (holitom | vqtoken)
    llm_frames: int = 32  # frames per video given to the video LLM, evenly spaced
    llm_inner_layer: int = 18  # HoliTom inner-LLM merge layer k
    llm_inner_ratio: float = 0.5  # HoliTom inner-LLM merge ratio r
    llm_batch_tokens: int = 8192  # padded tokens per LLM batch
    frame_dedup: float = 0.0  # B-VLLM-style static-frame dropping before the ViT; 0 = off, 0.15 recommended
    sample_fps: float = 1.0
    segment_frames: int = 12
    max_frames: int = 3600  # uniform sub-sampling above this many sampled frames per video
    batch_segments: int = 0  # segments per encoder forward pass; 0 = auto (4 on CPU, sized for the device on CUDA)
    decode: str = "fast"  # fast: skip non-reference frames when sampling sparsely; exact: decode every frame
    decode_workers: int = 0  # software decoders side by side over keyframe spans of one video; 0 = auto (min(2, CPUs))
    index_dir: Path | None = None  # None -> data_dir / "index"
    index_type: str = "auto"  # exact flat while small, IVF from search.vector_index.AUTO_IVF_AT (100k) segments
    index_auto_at: int = 0  # auto: segments at which the index turns IVF; 0 -> AUTO_IVF_AT (measured)
    index_refresh_seconds: float = 2.0
    index_nlist: int = 0  # IVF inverted lists; 0 -> about 4·sqrt(n) of the vectors it is trained on
    index_nprobe: int = 0  # IVF lists probed per query; 0 -> nlist / 8 (flat IVF) or nlist / 16 (IVF-PQ)
    search_threads: int = 0  # threads one IVF search splits its probed lists among; 0 = auto (min(2, CPUs))
    index_pq_m: int = 64  # IVF-PQ: bytes per vector (sub-quantizers of 8 bits); must divide the embedding size
    index_lists: str = "fp32"  # how IVF lists hold vectors: fp32 (exact scores) or fp16 (half the memory, scores within ~1e-4)
    search_candidates: int = 200
    text_batch_max: int = 32  # queries per shared text-encoder forward; 1 turns the batcher off
    text_batch_wait_ms: float = 2.0  # how long a batch waits for more queries, only when queries come together
    api_key: str = ""
    protect_reads: bool = False  # require the API key on read routes too (/healthz stays open)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; () -> CORS off
    max_upload_mb: int = 2048
    max_image_bytes: int = 10 * 1024 * 1024  # an example image searched by (POST /api/search, vidseek search --image)
    visibility_timeout: float = 3600.0  # seconds before the broker redelivers an unacknowledged task
    heartbeat_seconds: float = 10.0  # how often a running job proves its worker is alive
    job_stale_seconds: float = 60.0  # a running job without a heartbeat for this long is re-queued
    job_max_attempts: int = 3  # a job whose worker died this many times fails (a poison video)
    reap_interval_seconds: float = 15.0  # how often `vidseek beat` looks for stale jobs
    task_max_retries: int = 8  # retries of a job after transient errors (database or broker down)
    port: int = 8000  # `vidseek serve` / `vidseek demo` without --port
    log_level: str = "INFO"
    log_format: str = "json"

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise SettingsError(f"VIDSEEK_ENCODER must be one of {ENCODERS}, got {self.encoder!r}")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"VIDSEEK_PRECISION must be one of {PRECISIONS}, got {self.precision!r}")
        if self.text_runtime not in TEXT_RUNTIMES:
            raise SettingsError(f"VIDSEEK_TEXT_RUNTIME must be one of {TEXT_RUNTIMES}, got {self.text_runtime!r}")
        if self.summary not in SUMMARIES:
            raise SettingsError(f"VIDSEEK_SUMMARY must be one of {SUMMARIES}, got {self.summary!r}")
        if self.index_type not in INDEX_TYPES:
            raise SettingsError(f"VIDSEEK_INDEX_TYPE must be one of {INDEX_TYPES}, got {self.index_type!r}")
        if self.sample_fps <= 0:
            raise SettingsError("VIDSEEK_SAMPLE_FPS must be > 0")
        if not 0.0 < self.summary_retain <= 1.0:
            raise SettingsError("VIDSEEK_SUMMARY_RETAIN must be in (0, 1]")
        if self.rerank not in ("auto", *RERANKERS):
            raise SettingsError(f"VIDSEEK_RERANK must be auto or one of {RERANKERS}, got {self.rerank!r}")
        if self.rerank == "llm" and not self.llm_reranker:
            raise SettingsError("VIDSEEK_RERANK=llm needs VIDSEEK_LLM_RERANKER (a model id or local directory)")
        if self.rerank_k < 1 or self.rerank_timeout <= 0:
            raise SettingsError("VIDSEEK_RERANK_K must be >= 1 and VIDSEEK_RERANK_TIMEOUT > 0")
        if not 0.0 <= self.rerank_weight <= 1.0:
            raise SettingsError("VIDSEEK_RERANK_WEIGHT must be in [0, 1]")
        if self.llm_summary not in LLM_SUMMARIES:
            raise SettingsError(f"VIDSEEK_LLM_SUMMARY must be one of {LLM_SUMMARIES}, got {self.llm_summary!r}")
        if self.llm_frames < 1 or self.llm_inner_layer < 1 or self.llm_batch_tokens < 1:
            raise SettingsError("VIDSEEK_LLM_FRAMES, VIDSEEK_LLM_INNER_LAYER and VIDSEEK_LLM_BATCH_TOKENS must be >= 1")
        if not 0.0 <= self.llm_inner_ratio < 1.0:
            raise SettingsError("VIDSEEK_LLM_INNER_RATIO must be in [0, 1)")
        if self.frame_dedup < 0:
            raise SettingsError("VIDSEEK_FRAME_DEDUP must be >= 0 (0 turns it off)")
        if self.segment_frames < 1 or self.max_frames < 1 or self.batch_segments < 0:
            raise SettingsError("VIDSEEK_SEGMENT_FRAMES and VIDSEEK_MAX_FRAMES must be >= 1, VIDSEEK_BATCH_SEGMENTS >= 0 (0 = auto)")
        if self.decode not in DECODE_MODES:
            raise SettingsError(f"VIDSEEK_DECODE must be one of {DECODE_MODES}, got {self.decode!r}")
        if self.decode_workers < 0:
            raise SettingsError("VIDSEEK_DECODE_WORKERS must be >= 0 (0: auto, 1: one decoder)")
        if self.index_nlist < 0 or self.index_nprobe < 0 or self.index_pq_m < 1:
            raise SettingsError("VIDSEEK_INDEX_NLIST and VIDSEEK_INDEX_NPROBE must be >= 0, VIDSEEK_INDEX_PQ_M >= 1")
        if self.index_lists not in LIST_STORAGE:
            raise SettingsError(f"VIDSEEK_INDEX_LISTS must be one of {LIST_STORAGE}, got {self.index_lists!r}")
        if self.index_auto_at < 0:
            raise SettingsError("VIDSEEK_INDEX_AUTO_AT must be >= 0 (0: the measured default)")
        if self.search_threads < 0:
            raise SettingsError("VIDSEEK_SEARCH_THREADS must be >= 0 (0: auto, 1: one thread per search)")
        if self.text_batch_max < 1 or self.text_batch_wait_ms < 0:
            raise SettingsError("VIDSEEK_TEXT_BATCH_MAX must be >= 1 and VIDSEEK_TEXT_BATCH_WAIT_MS >= 0")
        if self.heartbeat_seconds <= 0 or self.job_stale_seconds <= 2 * self.heartbeat_seconds:
            raise SettingsError("VIDSEEK_JOB_STALE_SECONDS must exceed twice VIDSEEK_HEARTBEAT_SECONDS (> 0)")
        if self.protect_reads and not self.api_key:
            raise SettingsError("VIDSEEK_PROTECT_READS needs VIDSEEK_API_KEY (the key read routes will require)")
        if self.max_image_bytes < 1:
            raise SettingsError("VIDSEEK_MAX_IMAGE_BYTES must be >= 1")
        if self.job_max_attempts < 1 or self.task_max_retries < 0:
            raise SettingsError("VIDSEEK_JOB_MAX_ATTEMPTS must be >= 1 and VIDSEEK_TASK_MAX_RETRIES >= 0")

    # ----- derived locations -------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'catalog.db'}"

    @property
    def resolved_decode_workers(self) -> int:
        """``decode_workers``, auto resolved to the CPUs this process may use, at most 2 (a worker
        pool already runs one job per process; ``benchmarks/ingest_bench.py`` measured 2)."""
        return self.decode_workers or _usable_cpus(AUTO_DECODE_WORKERS)

    @property
    def resolved_search_threads(self) -> int:
        """``search_threads``, auto resolved to the CPUs this process may use, at most 2 (an API
        process serves several requests; ``benchmarks/load_bench.py`` measured 2)."""
        return self.search_threads or _usable_cpus(AUTO_SEARCH_THREADS)

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
    def default_rerank(self) -> str:
        """The reranker used when a request names none: ``VIDSEEK_RERANK``, or with ``auto`` late
        interaction when ingestion stores summaries and none otherwise."""
        if self.rerank != "auto":
            return self.rerank
        return "late" if self.summary != "none" else "none"

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
        if kind.startswith("tuple[str"):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if kind == "bool":
            return _parse_bool(raw)
        if "Path" in kind:
            return Path(raw).expanduser()
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise SettingsError(f"VIDSEEK_{name.upper()}={raw!r} is not a valid {kind}") from exc
    return raw


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
