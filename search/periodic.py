"""Run an action every few seconds on a daemon thread until stopped; a failing run is logged and the
action tried again at the next tick (the catalog briefly unreachable, a model that cannot load)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

MIN_PERIOD_SECONDS = 0.1


def run_periodically(action: Callable[[], object], seconds: float, stop: threading.Event, name: str,
                     failure: str, logger: logging.Logger) -> threading.Thread:
    """Start a daemon thread ``name`` calling ``action`` every ``seconds`` (at least every
    :data:`MIN_PERIOD_SECONDS`) until ``stop`` is set; an exception is logged as ``failure`` on
    ``logger``, with the error in ``extra``."""

    def loop() -> None:
        while not stop.wait(max(seconds, MIN_PERIOD_SECONDS)):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 -- logged; the next tick tries again
                logger.warning(failure, extra={"error": f"{type(exc).__name__}: {exc}"})

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
