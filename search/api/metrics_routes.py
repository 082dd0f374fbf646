"""``/metrics`` (Prometheus text format) and the per-request counting behind its HTTP metrics."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, request

from search.api.context import ctx
from search.metrics import UNMATCHED_ROUTE, observe_request
from search.metrics_exposition import CONTENT_TYPE, ServingStateCollector, render

bp = Blueprint("metrics", __name__)
STARTED = "vidseek.started"  # WSGI environ key: when the request reached the app (perf_counter seconds)


@bp.get("/metrics")
def metrics():
    c = ctx()
    return Response(render(ServingStateCollector(c.catalog, c.index)), content_type=CONTENT_TYPE)


def install_request_metrics(app: Flask) -> None:
    """Count every response of ``app`` by route (its URL rule: bounded, unlike paths), method and status,
    and time it from the moment the request reached the app -- before URL value checks or access
    control, which may answer it themselves."""
    dispatch = app.wsgi_app

    def timed(environ, start_response):  # noqa: ANN001 -- the WSGI callable's signature
        environ[STARTED] = time.perf_counter()
        return dispatch(environ, start_response)

    app.wsgi_app = timed

    @app.after_request
    def _count(response: Response) -> Response:
        rule = request.url_rule
        observe_request(rule.rule if rule is not None else UNMATCHED_ROUTE, request.method, response.status_code,
                        time.perf_counter() - request.environ[STARTED])
        return response
