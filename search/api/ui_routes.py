"""The search web page (plain HTML/JS/CSS served by Flask) and its icon."""

from __future__ import annotations

from flask import Blueprint, render_template

from models.registry import RERANKERS
from search.api.context import ctx

bp = Blueprint("ui", __name__, static_folder="../static", static_url_path="/static", template_folder="../templates")


@bp.get("/")
def index():
    c = ctx()
    reranking = c.queries.reranking
    return render_template("index.html", banner=c.banner, model=c.model_name, precision=c.precision,
                           text_runtime=c.text_runtime, rerank=reranking.default, rerankers=reranking.availability(),
                           choices=[(m.name, m.label) for m in RERANKERS.values()])


@bp.get("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico whatever the page links; answer with the page's SVG icon."""
    return bp.send_static_file("favicon.svg")
