"""The method registries (``models.registry``) are the one list of encoders, summarizers and rerankers:
settings, the API, its OpenAPI enum, the web page, ``vidseek eval`` and the docs show what they hold, and
the factories dispatch through them."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from indexer.cli import build_parser
from indexer.evaluation.configs import check_rerankers, eval_rerankers
from models.encoders import FullClipEncoder, build_encoder
from models.registry import ENCODERS, RERANKERS, SUMMARIZERS, Method, Registry, UnknownMethod
from models.summary import summarize
from models.tempme import TempMeEncoder
from search import settings as settings_module
from search.openapi import openapi_document
from search.settings import Settings, SettingsError
from tests.conftest import REPO


def test_settings_choices_are_the_registries() -> None:
    assert settings_module.ENCODERS == ENCODERS.names() == ("full", "tempme")
    assert settings_module.SUMMARIES == ("none", *SUMMARIZERS.names()) == ("none", "holitom", "vqtoken")
    assert settings_module.LLM_SUMMARIES == SUMMARIZERS.names()
    assert settings_module.RERANKERS == RERANKERS.names() == ("none", "late", "llm")
    with pytest.raises(SettingsError, match="VIDSEEK_ENCODER must be one of"):
        Settings(encoder="turbo")


def test_openapi_enums_are_the_reranker_registry() -> None:
    doc = openapi_document("0")
    params = {p["name"]: p for p in doc["paths"]["/api/search"]["get"]["parameters"]}
    assert params["rerank"]["schema"]["enum"] == list(RERANKERS)
    assert doc["components"]["schemas"]["SearchRequest"]["properties"]["rerank"]["enum"] == [*RERANKERS, None]
    assert doc["components"]["schemas"]["Rerank"]["properties"]["method"]["enum"] == list(RERANKERS)


def test_eval_cli_lists_the_registries(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"encoders ({', '.join(ENCODERS)})" in help_text
    assert f"of {', '.join(eval_rerankers())}" in help_text
    assert eval_rerankers() == tuple(n for n in RERANKERS if RERANKERS[n].summary_space != "llm") == ("none", "late")
    check_rerankers(["none", "late"])


def test_the_web_page_offers_every_reranker(settings: Settings) -> None:
    from indexer.service import build_runtime
    from search.api import create_app

    runtime = build_runtime(settings.with_overrides(encoder="full"))
    page = create_app(runtime.api_context()).test_client().get("/").get_data(as_text=True)
    rerank = re.search(r'<select id="rerank".*?</select>', page, re.S).group(0)  # not the match toggle's options
    options = re.findall(r'<option value="(\w+)"', rerank)
    assert options == list(RERANKERS)
    assert all(f">{m.label}" in page for m in RERANKERS.values())
    runtime.catalog.dispose()


def _doc_choices(text: str, variable: str) -> set[str]:
    """The backticked values in the description column of ``variable``'s row of a settings table."""
    row = next(line for line in text.splitlines() if line.startswith(f"| `{variable}`"))
    return set(re.findall(r"`([a-z]+)`", row.split("|")[3])) - {"auto"}


def test_the_docs_list_the_registries() -> None:
    readme = (REPO / "README.md").read_text()
    reranking = (REPO / "docs" / "reranking.md").read_text()
    assert _doc_choices(readme, "VIDSEEK_ENCODER") == set(ENCODERS)
    assert _doc_choices(readme, "VIDSEEK_SUMMARY") == set(SUMMARIZERS)
    assert _doc_choices(readme, "VIDSEEK_RERANK") == set(RERANKERS)
    assert _doc_choices(reranking, "VIDSEEK_RERANK") == set(RERANKERS)
    assert _doc_choices(reranking, "VIDSEEK_LLM_SUMMARY") == set(SUMMARIZERS)


def test_factories_dispatch_through_the_registries(tiny_backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(build_encoder("full", tiny_backbone), FullClipEncoder)
    assert type(build_encoder("tempme", tiny_backbone)) is TempMeEncoder
    with pytest.raises(ValueError, match="unknown encoder 'turbo'"):
        build_encoder("turbo", tiny_backbone)

    # one registry line makes a new method reachable through summarize()
    def first_tokens(patch_tokens, cls_attention, times, code_vectors, keep: int = 1):
        from models.summary import VideoSummary

        t, n, _ = patch_tokens.shape
        m = keep
        return VideoSummary(patch_tokens[0, :m].float(), torch.full((m,), t * n // m), torch.zeros(m, dtype=torch.long),
                            torch.full((m,), t - 1), torch.arange(m), times, n, "first")

    monkeypatch.setitem(SUMMARIZERS.methods, "first", Method("first", first_tokens))
    out = summarize("first", torch.randn(3, 4, 8), None, [0.0, 1.0, 2.0], keep=2)
    assert out.method == "first" and out.num_tokens == 2
    with pytest.raises(ValueError, match="unknown summary method 'nope'"):
        summarize("nope", torch.randn(3, 4, 8), None, [0.0, 1.0, 2.0])


def test_registry_rejects_duplicates_and_names_unknowns() -> None:
    registry = Registry("widget", Method("a", "math:sqrt"))
    assert registry.create("a", 9.0) == 3.0
    with pytest.raises(ValueError, match="registered already"):
        registry.register(Method("a", None))
    with pytest.raises(UnknownMethod, match=r"unknown widget 'b'; expected one of \('a',\)"):
        registry["b"]
    assert "b" not in registry and registry.get("b") is None
    assert RERANKERS["late"].params_class().__name__ == "LateParams"


def test_listing_methods_imports_no_torch() -> None:
    code = "import sys, models.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"
