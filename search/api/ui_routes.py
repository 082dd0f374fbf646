"""The search web page (plain HTML/JS/CSS served by Flask)."""

from __future__ import annotations

from flask import Blueprint, render_template

from models.registry import RERANKERS
from search.api.context import ctx

bp = Blueprint("ui", __name__, static_folder="../static", static_url_path="/static", template_folder="../templates")


@bp.get("/")
def index():
    c = ctx()
    reranking = c.queries.reranking
    return render_template("index.html", banner=c.banner, model=c.model_name, rerank=reranking.default,
                           rerankers=set(reranking.rerankers), choices=[(m.name, m.label) for m in RERANKERS.values()])
