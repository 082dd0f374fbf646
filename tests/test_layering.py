"""The layers' imports: a Celery worker loads no web framework, and ``models`` no service code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.conftest import REPO


def _loaded_modules(*imports: str) -> set[str]:
    """Top-level packages in ``sys.modules`` of a fresh interpreter after importing ``imports``."""
    code = "".join(f"import {name}\n" for name in imports) + "import json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return set(json.loads(out.stdout))


def test_the_worker_imports_no_flask() -> None:
    loaded = _loaded_modules("indexer.tasks", "indexer.reaper")
    assert "celery" in loaded  # the check sees what the worker imports
    assert not loaded & {"flask", "werkzeug"}


def test_models_import_no_service_code() -> None:
    loaded = _loaded_modules("models.encoders", "models.summary", "models.rerankers.late", "models.rerankers.llava")
    assert "torch" in loaded
    assert not loaded & {"flask", "werkzeug", "celery", "sqlalchemy", "prometheus_client", "search", "indexer"}


def _imported_packages(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return {name.split(".")[0] for name in names}


def test_benchmarks_do_not_import_tests() -> None:
    """Tests import shared tiny models and helpers from ``benchmarks``; the other way round would be a cycle."""
    sources = sorted((REPO / "benchmarks").glob("*.py"))
    assert any("benchmarks" in _imported_packages(p) for p in sources)  # the check reads real imports
    assert [p.name for p in sources if "tests" in _imported_packages(p)] == []
