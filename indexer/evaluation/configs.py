"""``vidseek eval`` configurations by name: ``<encoder>+<modifier>...`` and the rerankers an evaluation
can run. Imports neither torch nor the pipeline, so that ``vidseek`` builds its parser (and reports a
bad name) without loading them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from models.registry import RERANKERS
from search.settings import Settings, SettingsError


def static_change_threshold() -> float:
    """models.bvllm's default static-frame threshold (imported on use: models.bvllm loads torch)."""
    from models.bvllm import STATIC_CHANGE_THRESHOLD

    return STATIC_CHANGE_THRESHOLD


class EvalError(RuntimeError):
    """The evaluation cannot run as asked; the message says why."""


# ----- configurations -----------------------------------------------------------------------
# ``<encoder>+<modifier>...``: the encoder is VIDSEEK_ENCODER, each modifier a Settings override.
MODIFIERS: dict[str, Callable[[Settings], dict[str, object]]] = {
    # B-VLLM-style static-frame dropping before the ViT (VIDSEEK_FRAME_DEDUP): the configured
    # threshold when one is set, else models.bvllm's default.
    "bvllm-dedup": lambda base: {"frame_dedup": base.frame_dedup or static_change_threshold()},
}


@dataclass(frozen=True)
class EncoderConfig:
    """One ingestion configuration: its name and the Settings it changes."""

    name: str
    overrides: Mapping[str, object]


def parse_encoder_config(name: str, base: Settings) -> EncoderConfig:
    """``"tempme+bvllm-dedup"`` -> encoder ``tempme`` with frame dropping. Everything a name does
    not ask for is switched off, whatever the environment says (``full`` is plain CLIP)."""
    encoder, *modifiers = name.strip().split("+")
    overrides: dict[str, object] = {"encoder": encoder, "frame_dedup": 0.0}
    for modifier in modifiers:
        if modifier not in MODIFIERS:
            raise EvalError(f"unknown modifier {modifier!r} in {name!r}; known: {', '.join(MODIFIERS)}")
        overrides.update(MODIFIERS[modifier](base))
    try:
        base.with_overrides(**overrides)
    except SettingsError as exc:
        raise EvalError(f"configuration {name!r}: {exc}") from exc
    return EncoderConfig(name.strip(), overrides)


def eval_rerankers() -> tuple[str, ...]:
    """The registered rerankers an evaluation can run (all but those reading LLM-space summaries)."""
    return tuple(name for name, m in RERANKERS.items() if m.summary_space != "llm")


def check_rerankers(names: Sequence[str]) -> None:
    """Raise :class:`EvalError` for a reranker name that is unknown or cannot run in an evaluation."""
    for name in names:
        if name not in eval_rerankers():
            raise EvalError(f"unknown reranker {name!r}; available: {', '.join(eval_rerankers())}")
