"""Shared fixtures.

- A tiny open_clip model registered from tests/assets (same code path as ViT-B/32: 12 layers,
  patch 32 at 224 px, 50 tokens per frame; width 64), saved once as a checkpoint file so that
  subprocesses (CLI, Celery workers) load identical weights through ``VIDSEEK_PRETRAINED``.
- The generated sample videos, once per session.
- Settings pointing at a fresh data folder, and a PostgreSQL database created for the session.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import torch

from benchmarks.common import PG_ADMIN_URL
from benchmarks.common import temporary_database as new_database
from indexer.samples import ensure_samples
from models.backbone import ClipBackbone
from models.factory import load_backbone
from search.settings import Settings

ASSETS = Path(__file__).parent / "assets"
TINY_MODEL = "vidseek-tiny-ViT"
TINY_CONFIG_DIR = ASSETS / "model_configs"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_config_dir() -> Path:
    return TINY_CONFIG_DIR


@pytest.fixture(scope="session")
def tiny_backbone() -> ClipBackbone:
    """ViT with 12 layers, patch 32 at 224 px (50 tokens per frame, like ViT-B/32), width 64."""
    return load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: ClipBackbone) -> Path:
    """The tiny model's weights as a local checkpoint file (the offline loading path)."""
    path = tmp_path_factory.mktemp("weights") / "tiny_open_clip.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("samples")
    ensure_samples(folder, include_real=False)
    return folder


@pytest.fixture()
def settings(tmp_path: Path, samples_dir: Path, tiny_checkpoint: Path) -> Settings:
    """Embedded defaults (SQLite, in-process) in a fresh folder, with the tiny model. Decoding is
    exact: these tests pin samples to their instants (0 s, 1 s, ...); fast decoding, the
    product default, has its own tests (tests/test_fast_decode.py, end to end included)."""
    return Settings(
        data_dir=tmp_path / "data",
        media_roots=(samples_dir, tmp_path / "media"),
        model=TINY_MODEL,
        pretrained=str(tiny_checkpoint),
        model_config_dir=TINY_CONFIG_DIR,
        device="cpu",
        decode="exact",
        precision="fp32",  # the same numbers on AVX2 and AMX machines; auto has its own tests
        index_refresh_seconds=0.0,
        log_format="text",
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDSEEK_")}
    env.update(
        VIDSEEK_DATA_DIR=str(settings.data_dir),
        VIDSEEK_DATABASE_URL=settings.database_url,
        VIDSEEK_BROKER_URL=settings.broker_url,
        VIDSEEK_TASK_QUEUE=settings.task_queue,
        VIDSEEK_MEDIA_ROOTS=os.pathsep.join(str(p) for p in settings.media_roots),
        VIDSEEK_MODEL=settings.model,
        VIDSEEK_PRETRAINED=settings.pretrained,
        VIDSEEK_MODEL_CONFIG_DIR=str(settings.model_config_dir),
        VIDSEEK_DEVICE=settings.device,
        VIDSEEK_PRECISION=settings.precision,
        VIDSEEK_ENCODER=settings.encoder,
        VIDSEEK_DECODE=settings.decode,
        VIDSEEK_INDEX_REFRESH_SECONDS=str(settings.index_refresh_seconds),
        VIDSEEK_API_KEY=settings.api_key,
        VIDSEEK_LOG_FORMAT="text",
        PYTHONPATH=str(REPO),
    )
    return env


@contextmanager
def temporary_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the machine's server, dropped afterwards.

    Fails (never skips) when the server is down: `make test` starts it first.
    """
    try:
        with new_database(prefix, PG_ADMIN_URL) as url:
            yield url
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); run scripts/ensure_services.sh")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database for this test session."""
    with temporary_database("vidseek_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = "redis://127.0.0.1:6379/15"
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"], capture_output=True, text=True)
    if "PONG" not in out.stdout:
        pytest.fail("Redis is not reachable at 127.0.0.1:6379; run scripts/ensure_services.sh")
    return url
