"""The model settings of an embedding space, both ways: the space that ``Settings`` produce, and the
``Settings`` that produce a space the catalog names (``search.space_store``).

The catalog's active space wins over ``VIDSEEK_MODEL`` / ``VIDSEEK_PRETRAINED`` / ``VIDSEEK_ENCODER``
/ ``VIDSEEK_TEMPME_WEIGHTS``: after ``vidseek reindex`` switched spaces, every process -- API, CLI,
worker -- encodes with the active space's model whatever its environment says. Only a catalog
that never re-indexed (no registered space) takes its space from the settings.
"""

from __future__ import annotations

from pathlib import Path

from models.factory import embedding_space_key
from search.settings import Settings
from search.space_store import SpaceInfo, SpaceStore
from search.tables import SpaceState


def settings_space(settings: Settings, state: SpaceState = SpaceState.active) -> SpaceInfo:
    """The embedding space ``settings`` produce (nothing is loaded: the key is computed)."""
    tempme = str(settings.tempme_weights) if settings.tempme_weights is not None else None
    key = embedding_space_key(settings.model, settings.pretrained, settings.encoder, settings.tempme_weights)
    return SpaceInfo(key, settings.model, settings.pretrained, settings.encoder, tempme, state)


def space_settings(settings: Settings, space: SpaceInfo) -> Settings:
    """``settings`` with the model of ``space`` (device, precision and the rest unchanged)."""
    tempme = Path(space.tempme_weights) if space.tempme_weights else None
    return settings.with_overrides(model=space.model, pretrained=space.pretrained, encoder=space.encoder, tempme_weights=tempme)


def active_settings(settings: Settings, catalog: SpaceStore) -> Settings:
    """``settings`` with the catalog's active space's model; unchanged when none is registered."""
    active = catalog.space_in(SpaceState.active)
    return settings if active is None else space_settings(settings, active)
