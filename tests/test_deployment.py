"""docker-compose.yml names only commands, flags and settings that vidseek has (Docker itself
cannot run here; tests/test_topology.py runs the same processes locally)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import yaml

from indexer.cli import build_parser
from search.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def expand(text: str) -> str:
    """Compose variable syntax with the defaults filled in (``${X:-d}`` -> d, ``${X:?m}`` -> set)."""
    return re.sub(r"\$\{\w+(?::-([^}]*)|:\?[^}]*)\}", lambda m: m.group(1) if m.group(1) is not None else "set", text)


def test_every_vidseek_command_parses() -> None:
    commands = {name: expand(s["command"]) for name, s in COMPOSE["services"].items() if "vidseek" in str(s.get("command"))}
    assert {"api", "worker", "beat", "worker-gpu", "api-gpu"} <= set(commands)
    for name, command in commands.items():
        args = build_parser().parse_args(command.split()[1:])
        assert args.func.__name__ == f"cmd_{command.split()[1]}", name


def test_environment_is_valid_settings() -> None:
    known = {f"VIDSEEK_{f.name.upper()}" for f in fields(Settings)}
    vidseek = [s for s in COMPOSE["services"].values() if "vidseek" in str(s.get("command"))]
    for service in vidseek:
        env = {k: expand(str(v)) for k, v in service["environment"].items()}
        assert set(env) <= known, set(env) - known
        settings = Settings.from_env(env)
        assert settings.broker_url.startswith("redis://") and settings.database_url.startswith("postgresql")


def test_gpu_services_reserve_a_gpu_and_use_the_gpu_image() -> None:
    """``video`` mounts the driver's NVDEC library: without it hardware decoding falls back to software."""
    for name in ("worker-gpu", "api-gpu"):
        service = COMPOSE["services"][name]
        assert service["profiles"] == ["gpu"] and service["build"]["target"] == "gpu"
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu", "video"]
        assert service["environment"]["VIDSEEK_DEVICE"] == "cuda"
    assert "FROM base AS gpu" in (REPO / "Dockerfile").read_text()
