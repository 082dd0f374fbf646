"""API-key protection (``VIDSEEK_API_KEY``) and cross-origin access (``VIDSEEK_CORS_ORIGINS``).

Write routes need the key whenever one is configured; with ``VIDSEEK_PROTECT_READS=1`` every
other route does too, except ``/healthz`` (load balancers and orchestrators probe it). Keys
are compared in constant time. CORS is off unless origins are listed: browsers then may call
the API from exactly those origins.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps

from flask import Flask, Response, request

from search.api.context import ctx
from search.api.errors import ApiError

OPEN_ENDPOINTS = frozenset({"meta.health"})
CORS_HEADERS = "Authorization, Content-Type, X-API-Key"
CORS_MAX_AGE = "600"


def presented_key() -> str:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("X-API-Key", "")


def check_api_key() -> None:
    """Raise 401 unless the request carries the configured key (no key configured: allowed)."""
    expected = ctx().settings.api_key
    if expected and not hmac.compare_digest(presented_key().encode(), expected.encode()):
        raise ApiError(401, "missing or wrong API key (send X-API-Key or Authorization: Bearer)")


def require_api_key(view: Callable) -> Callable:
    """Reject the request with 401 unless it carries the configured key (constant-time compare).
    With no key configured, write routes are open (the embedded default)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        check_api_key()
        return view(*args, **kwargs)

    return wrapper


def install_access_control(app: Flask) -> None:
    """Read-route protection and CORS for ``app``, as configured in its context's settings."""

    @app.before_request
    def _protect_reads() -> None:
        settings = ctx().settings
        if request.method == "OPTIONS" or not settings.protect_reads or request.endpoint in OPEN_ENDPOINTS:
            return  # CORS preflights carry no credentials; write routes always need the key anyway
        check_api_key()

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and origin in ctx().settings.cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS"
            response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
            response.vary.add("Origin")
        return response
