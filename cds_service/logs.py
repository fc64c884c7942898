"""Structured JSON logs: one object per line with hookInstance, service, decision and timings.

Nothing that could carry PHI or credentials is ever passed to the logger (no bodies, no tokens,
no JWTs, no patient ids); ``JsonFormatter`` only serialises the explicit ``fields`` extra. Every module
logs under ``priorauth_cds.*`` with ``log_event``; requests are named by their route (URL rule), never
their raw path. gunicorn's own lines go through ``GunicornJsonLogger`` (JSON, text arguments withheld, no
access log: the service's ``request`` event is the access log), werkzeug's through the same handler.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...fields}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type and where it was raised; never the message, which may quote request data.
            entry["error_type"] = record.exc_info[0].__name__
            frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info[2] else []
            entry["error_at"] = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}:{f.name}" for f in frames[-5:]]
        return orjson.dumps(entry, default=str).decode()


class ThirdPartyJsonFormatter(JsonFormatter):
    """For library loggers (gunicorn, werkzeug): numbers (pids, counts) are kept in the event, text arguments
    (request URIs with their query strings, addresses) are withheld and only counted."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args if isinstance(record.args, tuple) else ((record.args,) if record.args else ())
        if args and not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            record = logging.makeLogRecord({**record.__dict__, "args": None, "fields": {"args_withheld": len(args)}})
        return super().format(record)


def _json_handler(formatter: logging.Formatter) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler._priorauth = True  # type: ignore[attr-defined]
    return handler


def configure_logging(level: str = "INFO") -> None:
    """Route the service's loggers (and werkzeug's) to stderr as JSON lines (idempotent)."""
    root = logging.getLogger("priorauth_cds")
    root.setLevel(level)
    if not any(getattr(h, "_priorauth", False) for h in root.handlers):
        root.addHandler(_json_handler(JsonFormatter()))
        root.propagate = False
    werkzeug = logging.getLogger("werkzeug")  # only the development server logs here; its lines name raw paths
    werkzeug.setLevel(logging.WARNING)
    if not any(getattr(h, "_priorauth", False) for h in werkzeug.handlers):
        werkzeug.addHandler(_json_handler(ThirdPartyJsonFormatter()))
        werkzeug.propagate = False


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One ``event`` record with ``fields``: what ``Logger.log`` does, without looking up the calling frame (no
    formatter here prints a file or line; the lookup was a fifth of a record's cost, on every request)."""
    if logger.isEnabledFor(level):
        logger.handle(
            logger.makeRecord(logger.name, level, "(unknown file)", 0, event, (), None, extra={"fields": fields})
        )
