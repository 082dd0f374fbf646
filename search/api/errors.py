"""JSON errors: every failure is ``{"error": {"status": N, "message": "..."}}`` with status N."""

from __future__ import annotations

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str):
    response = jsonify({"error": {"status": status, "message": message}})
    response.status_code = status
    return response


def _size(num_bytes: int) -> str:
    return f"{num_bytes // (1 << 20)} MiB" if num_bytes >= 1 << 20 else f"{num_bytes // 1024} KiB"


def _range_length(exc: HTTPException) -> int | str:
    """The full length of the resource a 416 refused a range of ("*" when unknown)."""
    length = getattr(exc, "length", None)
    if length is None and exc.response is not None:
        length = exc.response.content_length
    return length if length is not None else "*"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        message = exc.description or exc.name
        if exc.code == 413:
            limit = request.max_content_length  # this route's limit, else the app's upload limit
            message = f"request body is larger than the {_size(limit)} limit" if limit else message
        response = error_response(exc.code or 500, message)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        if exc.code == 416:  # RFC 9110 15.5.17: say how long the representation is
            response.headers["Content-Range"] = f"{getattr(exc, 'units', 'bytes')} */{_range_length(exc)}"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        return error_response(500, "internal server error")
