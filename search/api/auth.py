"""API-key protection of write routes (``VIDSEEK_API_KEY``)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps

from flask import request

from search.api.context import ctx
from search.api.errors import ApiError


def presented_key() -> str:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("X-API-Key", "")


def require_api_key(view: Callable) -> Callable:
    """Reject the request with 401 unless it carries the configured key (constant-time compare).
    With no key configured, write routes are open (the embedded default)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        expected = ctx().settings.api_key
        if expected and not hmac.compare_digest(presented_key().encode(), expected.encode()):
            raise ApiError(401, "missing or wrong API key (send X-API-Key or Authorization: Bearer)")
        return view(*args, **kwargs)

    return wrapper
