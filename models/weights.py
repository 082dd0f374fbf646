"""Names about model weights that need no torch, so that settings, the CLI's parser and its error
reporting import them without loading the model stack (``models.factory`` loads the weights)."""

from __future__ import annotations

RANDOM_WEIGHTS = "random"  # VIDSEEK_PRETRAINED=random: an untrained model (tests, offline demos)


class WeightsUnavailableError(RuntimeError):
    """The requested pretrained weights cannot be loaded (no network, unknown tag, bad file)."""
