"""Logging: the one place structlog and the standard library logging are configured.

Production lines are one JSON object each; ``RELAY_LOG_FORMAT=console`` gives readable lines
on a terminal. uvicorn's own loggers go through the same renderer. uvicorn's access log is
switched off by the app: ``service.access_log`` writes one with callback tokens masked.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
import threading
import time
from typing import IO, Any

import orjson
import structlog

from service.clock import rfc3339_micro

#: Keys whose values are never written, whoever binds them.
_SECRET_KEYS = frozenset(
    {"token", "secret", "admin_token", "authorization", "secret_key", "api_key"}
)
# A callback URL's token, wherever it appears; one already masked (``***``) is left alone.
# (A token ends where a URL or a quoted string would: ``/``, ``?``, quotes, white space, or
# a terminal's colour code.)
_CALLBACK_PATH = re.compile(r"(/callbacks/[^/\s?]+/)(?!\*\*\*(?![^/\s?\"'\x1b]))[^/\s?\"'\x1b]+")


def mask_callback_path(path: str) -> str:
    """``/callbacks/evolink/<token>`` -> ``/callbacks/evolink/***``."""
    # Searched first: most lines (every callback's access line) hold only masked paths, and a
    # search that finds nothing costs a quarter of a substitution that changes nothing.
    if "/callbacks/" not in path or _CALLBACK_PATH.search(path) is None:
        return path
    return _CALLBACK_PATH.sub(r"\1***", path)


_LEVELS = {"warn": "warning", "exception": "error"}


def _stamp(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Level, UTC time, secrets redacted and any exception written out: what structlog's
    ``add_log_level``, ``TimeStamper(fmt="iso", utc=True)`` and ``format_exc_info`` do, plus
    the redaction, in one step (every line pays for it; under load, for every callback)."""
    event_dict["level"] = _LEVELS.get(method_name, method_name)
    event_dict["timestamp"] = rfc3339_micro(time.time())
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "***"
    if "exc_info" in event_dict:
        return _format_exc_info(logger, method_name, event_dict)
    return event_dict


_format_exc_info = structlog.processors.format_exc_info


def _mask_callback_tokens(_logger: Any, _method: str, line: str) -> str:
    # On the rendered line, after every value (exception text included) has been written into
    # it: one search per line instead of a look at every value of every line.
    return mask_callback_path(line)


def _orjson_text(value: Any, **_kwargs: Any) -> str:
    # orjson is several times faster than the json module; values it does not know (an
    # exception, a path) are written with str().
    return orjson.dumps(value, default=str).decode()


class LineWriter:
    """structlog's logger: writes each rendered line to ``file``, once per loop iteration.

    On the event loop, lines are gathered and written together when the loop iteration ends
    (one write call for every line the iteration produced, instead of a write and a flush per
    line: at a few thousand callbacks per second, the writes alone cost more than rendering).
    Elsewhere (the CLI, other threads) a line is written at once. Lines still gathered when
    the process exits are written on the way out; a killed process loses at most one loop
    iteration's lines.
    """

    def __init__(self, file: IO[str]) -> None:
        self._file = file
        self._lines: list[str] = []
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        loop = asyncio._get_running_loop()
        if loop is None:
            with self._lock:
                self._file.write(message + "\n")
                self._file.flush()
            return
        with self._lock:  # (tests run loops on several threads)
            self._lines.append(message)
            first = len(self._lines) == 1
        if first:
            loop.call_soon(self.flush)

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            if lines:
                self._file.write("\n".join(lines) + "\n")
                self._file.flush()


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Configure structlog and the standard library's root logger once per process."""
    shared: list[Any] = [structlog.contextvars.merge_contextvars, _stamp]
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
        processors=[*shared, renderer, _mask_callback_tokens],
        logger_factory=_line_writer_factory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
                _mask_callback_tokens,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def _line_writer_factory(file: IO[str]) -> Any:
    writer = LineWriter(file)
    return lambda *_args: writer
