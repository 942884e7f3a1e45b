"""Logging set-up for entry points (the CLI): one JSON object per line on stderr.

Modules only call ``logging.getLogger(__name__)``; this is the one place that configures handlers.
Structured fields passed as ``extra={"fields": {...}}`` are merged into the line (the API's per-request
line uses it).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

_QUIET = ("httpx", "httpcore", "aiokafka", "faust", "mode", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
