"""Flask application factory: REST API, web UI, health and OpenAPI, as blueprints."""

from __future__ import annotations

from flask import Flask

from search.api import library_routes, meta_routes, metrics_routes, search_routes, ui_routes, video_routes
from search.api.auth import install_access_control
from search.api.context import ApiContext, install
from search.api.errors import ApiError, register_error_handlers
from search.api.metrics_routes import install_request_metrics
from search.api.search_routes import MAX_INT


def create_app(context: ApiContext) -> Flask:
    """A Flask app serving ``context`` (catalog, index, query service, ingestion queue)."""
    app = Flask(__name__, static_folder=None)  # the UI blueprint serves /static

    @app.url_value_preprocessor
    def _ids_in_range(endpoint: str | None, values: dict | None) -> None:
        """Catalog ids are 64-bit: a larger one names nothing (and the database cannot compare it)."""
        for name, value in (values or {}).items():
            if isinstance(value, int) and value > MAX_INT:
                raise ApiError(404, f"no {name.removesuffix('_id')} {value}")

    app.config["MAX_CONTENT_LENGTH"] = context.settings.max_upload_mb * (1 << 20)
    app.json.sort_keys = False
    install(app, context)
    register_error_handlers(app)
    install_access_control(app)
    install_request_metrics(app)
    for blueprint in (search_routes.bp, video_routes.bp, library_routes.bp, meta_routes.bp, metrics_routes.bp, ui_routes.bp):
        app.register_blueprint(blueprint)
    return app
