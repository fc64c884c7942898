"""gunicorn's logger class for ``priorauth-cds serve``: its error log as JSON lines, no access log.

The service's own ``request`` event (route, status, timings, hookInstance) is the access log; gunicorn's would
print raw paths and query strings. Text arguments of gunicorn's lines (request URIs) are withheld. Its "Invalid
request" warning formats the parser's error into the message itself (the raw request line, header names and
values: tokens, patient ids), so only the error's class is kept of it.
"""

from __future__ import annotations

import sys
from typing import Any

from gunicorn.glogging import Logger

from .logs import ThirdPartyJsonFormatter


class GunicornJsonLogger(Logger):  # type: ignore[misc]
    """``logger_class`` for gunicorn (set in ``cli.py``)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(ThirdPartyJsonFormatter())

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        super().warning(_without_request_text(msg), *args, **kwargs)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


#: gunicorn's ``handle_error`` message for a request its parser refused: ``Invalid request from ip=...: <error>``.
_INVALID_REQUEST = "Invalid request from ip="


def _without_request_text(msg: Any) -> Any:
    """gunicorn's invalid-request line reduced to the error's class (it is logged inside the ``except`` clause,
    so the exception being handled is that error); other messages unchanged."""
    if not (isinstance(msg, str) and msg.startswith(_INVALID_REQUEST)):
        return msg
    error = sys.exc_info()[0]
    return f"Invalid request: {error.__name__ if error is not None else 'unknown error'}"
