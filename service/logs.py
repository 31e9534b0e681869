"""Logging: the one place structlog and the standard library logging are configured.

Production lines are one JSON object each; ``RELAY_LOG_FORMAT=console`` gives readable lines
on a terminal. uvicorn's own loggers go through the same renderer. uvicorn's access log is
switched off by the app: ``service.access_log`` writes one with callback tokens masked.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson
import structlog

#: Keys whose values are never written, whoever binds them.
_SECRET_KEYS = frozenset(
    {"token", "secret", "admin_token", "authorization", "secret_key", "api_key"}
)
_CALLBACK_PATH = re.compile(r"(/callbacks/[^/\s?]+/)[^/\s?\"']+")


def mask_callback_path(path: str) -> str:
    """``/callbacks/evolink/<token>`` -> ``/callbacks/evolink/***``."""
    return _CALLBACK_PATH.sub(r"\1***", path)


def _redact(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "***"
    for key, value in event_dict.items():
        if isinstance(value, str) and "/callbacks/" in value:
            event_dict[key] = mask_callback_path(value)
    return event_dict


def _orjson_text(value: Any, **_kwargs: Any) -> str:
    # orjson is several times faster than the json module; values it does not know (an
    # exception, a path) are written with str().
    return orjson.dumps(value, default=str).decode()


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Configure structlog and the standard library's root logger once per process."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if log_format == "console"
        else structlog.processors.JSONRenderer(serializer=_orjson_text)
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    # The relay's own lines skip the standard library (a LogRecord per line cost about half
    # of each line's time); only foreign loggers (uvicorn) go through the handler below.
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
