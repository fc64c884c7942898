"""gunicorn's logger class for ``priorauth-cds serve``: its error log as JSON lines, no access log.

The service's own ``request`` event (route, status, timings, hookInstance) is the access log; gunicorn's would
print raw paths and query strings. Text arguments of gunicorn's lines (request URIs) are withheld.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from .logs import ThirdPartyJsonFormatter


class GunicornJsonLogger(Logger):  # type: ignore[misc]
    """``logger_class`` for gunicorn (set in ``cli.py``)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(ThirdPartyJsonFormatter())

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None
