"""Shared fixtures: a tiny open_clip model registered from tests/assets (same code path as ViT-B/32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.backbone import ClipBackbone, load_backbone

ASSETS = Path(__file__).parent / "assets"
TINY_MODEL = "vidseek-tiny-ViT"
TINY_CONFIG_DIR = ASSETS / "model_configs"


@pytest.fixture(scope="session")
def tiny_config_dir() -> Path:
    return TINY_CONFIG_DIR


@pytest.fixture(scope="session")
def tiny_backbone() -> ClipBackbone:
    """ViT with 12 layers, patch 32 at 224 px (50 tokens per frame, like ViT-B/32), width 64."""
    torch.set_num_threads(2)
    return load_backbone(TINY_MODEL, "random", "cpu", TINY_CONFIG_DIR)
