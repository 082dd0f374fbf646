"""The method registries: one per family (segment encoders, token summarizers, rerankers), each mapping
a method's name to its factory and parameters, as open_clip's ``factory.py`` maps model names to configs.

Everything that lists methods reads them here: ``search.settings`` validates ``VIDSEEK_ENCODER``,
``VIDSEEK_SUMMARY``, ``VIDSEEK_LLM_SUMMARY`` and ``VIDSEEK_RERANK`` against them, the API, its OpenAPI enum,
the web page and ``vidseek eval`` take their choices from them, and :func:`models.encoders.build_encoder`
and :func:`models.summary.summarize` dispatch through them. Adding a method is one new module and one
line here.

Factories are named by ``"module:attribute"`` strings and imported on first use, so listing the names
imports no torch and no method, and a method module may import the types of the module that dispatches
to it (``models.holitom`` builds a ``models.summary.VideoSummary``).

Factory signatures, per family:

* encoders: ``factory(backbone, **options) -> SegmentEncoder``, ``options`` the entry's ``options``
  taken from the settings (``weights``: ``VIDSEEK_TEMPME_WEIGHTS``).
* summarizers: ``factory(patch_tokens [T, N, W], cls_attention [T, N] | None, frame_times [T] float64,
  code_vectors, **params) -> VideoSummary``; ``params`` build the entry's ``params`` dataclass.
* rerankers: ``factory(settings, catalog, encoder, llm) -> search.rerank_service.Reranker``. Rerankers
  read summaries from the catalog, so their factories live in the search layer (named here, never
  imported from ``models``); their model code is ``models.rerankers.*``. ``none`` has no factory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# The precision policies (VIDSEEK_PRECISION); models.precision maps them to dtypes and chooses for ``auto``.
AUTO = "auto"
PRECISIONS: tuple[str, ...] = (AUTO, "fp32", "bf16", "fp16")
# Where the query text tower runs (VIDSEEK_TEXT_RUNTIME); models.text_onnx chooses for ``auto``.
TEXT_RUNTIMES: tuple[str, ...] = (AUTO, "torch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class Method:
    """One registered method.

    Attributes:
        name: what settings, the API and the CLI call it.
        factory: ``"module:attribute"`` (imported on first use) or the callable itself; None when the
            method builds nothing (reranker ``none``).
        params: ``"module:Class"`` of its hyper-parameters (a dataclass), or None.
        label: a short human description (the web page's reranker menu).
        options: encoders: keyword arguments the factory takes from the settings.
        summary_space: rerankers: the summaries they read (``"clip"``, ``"llm"``), or None.
        needs_text: rerankers: it reads the query's text, not only its embedding, so it cannot rerank a
            search by an example picture or moment alone.
    """

    name: str
    factory: str | Callable[..., Any] | None
    params: str | None = None
    label: str = ""
    options: tuple[str, ...] = ()
    summary_space: str | None = None
    needs_text: bool = False

    def load(self) -> Callable[..., Any]:
        """The factory (imported now if named by a string)."""
        if self.factory is None:
            raise ValueError(f"{self.name!r} has no factory")
        return _resolve(self.factory) if isinstance(self.factory, str) else self.factory

    def params_class(self) -> type | None:
        return _resolve(self.params) if self.params else None


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    value: Any = importlib.import_module(module)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


class UnknownMethod(KeyError, ValueError):
    """A name no method of the family is registered under (a ``KeyError`` for mapping use, a
    ``ValueError`` for callers validating input)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping[str, Method]):
    """The methods of one family, in registration order (the order every list shows them in)."""

    def __init__(self, family: str, *methods: Method):
        self.family = family
        self.methods: dict[str, Method] = {}
        for method in methods:
            self.register(method)

    def register(self, method: Method) -> Method:
        if method.name in self.methods:
            raise ValueError(f"{self.family} {method.name!r} is registered already")
        self.methods[method.name] = method
        return method

    def unregister(self, name: str) -> None:
        del self.methods[name]

    def __getitem__(self, name: str) -> Method:
        try:
            return self.methods[name]
        except KeyError:
            raise UnknownMethod(f"unknown {self.family} {name!r}; expected one of {self.names()}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.methods)

    def __len__(self) -> int:
        return len(self.methods)

    def names(self) -> tuple[str, ...]:
        return tuple(self.methods)

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``name``'s factory."""
        return self[name].load()(*args, **kwargs)


ENCODERS = Registry(
    "encoder",
    Method("full", "models.encoders:FullClipEncoder", label="plain CLIP on every frame"),
    Method("tempme", "models.factory:tempme_encoder", params="models.tempme:TempMeConfig",
           label="TempMe token merging inside the ViT", options=("weights",)),
)

SUMMARIZERS = Registry(
    "summary method",
    Method("holitom", "models.holitom:video_summary", params="models.holitom:HoliTomParams", label="HoliTom"),
    Method("vqtoken", "models.vqtoken:video_summary", params="models.vqtoken:VQTokenParams", label="VQToken"),
)

RERANKERS = Registry(
    "reranker",
    Method("none", None, label="off"),
    Method("late", "search.rerank_service:LateReranker.build", params="models.rerankers.late:LateParams",
           label="late interaction", summary_space="clip"),
    Method("llm", "search.rerank_service:LlmReranker.build", params="models.rerankers.prefill:InnerMergeParams",
           label="video LLM", summary_space="llm", needs_text=True),
)
