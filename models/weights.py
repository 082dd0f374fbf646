"""Names about model weights and where they run that need no torch, so that settings, the CLI's
parser and its error reporting import them without loading the model stack (``models.factory``
loads the weights, ``models.text_onnx`` exports the text tower)."""

from __future__ import annotations

RANDOM_WEIGHTS = "random"  # VIDSEEK_PRETRAINED=random: an untrained model (tests, offline demos)


class WeightsUnavailableError(RuntimeError):
    """The requested pretrained weights cannot be loaded (no network, unknown tag, bad file)."""


class TextExportError(RuntimeError):
    """The text tower cannot run on ONNX Runtime (not a plain causal EOT tower, the export disagrees
    with torch, or onnxruntime is missing)."""
