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
from dataclasses import dataclass
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
    """``/callbacks/evolink/<token>`` -> ``/callbacks/evolink/***``, every occurrence."""
    if "/callbacks/" not in path:
        return path
    # What ``_CALLBACK_PATH.sub(r"\1***", path)`` does, spliced by hand: the template
    # expansion of ``sub`` runs in Python and cost ten times the search (every callback's
    # access line masks its path).
    found = _CALLBACK_PATH.search(path)
    if found is None:
        return path
    parts = []
    start = 0
    while found is not None:
        parts += (path[start : found.end(1)], "***")
        start = found.end()
        found = _CALLBACK_PATH.search(path, start)
    parts.append(path[start:])
    return "".join(parts)


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
    Elsewhere (the CLI, other threads) a line is written at once, or with the lines a loop has
    gathered when it comes while they wait for their iteration's end. Lines still gathered at a
    normal exit are written on the way out (``relay serve`` never gets there: uvicorn ends it
    with the signal that stopped it, after its last iteration has flushed); a killed process
    loses at most one loop iteration's lines.
    """

    def __init__(self, file: IO[str]) -> None:
        self._file = file
        self._lines: list[str] = []
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        with self._lock:  # (tests run loops on several threads)
            self._lines.append(message)
            if len(self._lines) > 1:
                return  # a flush is due already
        # The first line since the last flush: on a loop, flush when this iteration ends; off a
        # loop, now. (Only the first line asks: on Python 3.11 asking costs a getpid call.)
        loop = asyncio._get_running_loop()
        if loop is None:
            self.flush()
        else:
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
    processors = [*shared, renderer, _mask_callback_tokens]
    writer = LineWriter(sys.stderr)
    logger_factory = _line_writer_factory(writer)
    structlog.configure(
        processors=processors,
        logger_factory=logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    global _direct
    _direct = _DirectJson(processors, tuple(processors), logger_factory, writer, numeric)
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
    # httpx writes an info line per request with the full URL (a provider's task, a
    # subscriber's path) and no context; the relay's own lines (``watch_polled``,
    # ``delivery_attempt``) say the same with the watch or delivery it was for.
    logging.getLogger("httpx").setLevel(max(numeric, logging.WARNING))


def _line_writer_factory(writer: LineWriter) -> Any:
    return lambda *_args: writer


@dataclass(frozen=True, slots=True)
class _DirectJson:
    """What ``info_line`` needs to write a line itself, and what shows it is still in force."""

    processors: list[Any]  # the list handed to structlog (``capture_logs`` edits it in place)
    as_configured: tuple[Any, ...]
    logger_factory: Any
    writer: LineWriter
    min_level: int


#: What ``configure_logging`` configured; None before (every line then goes via structlog).
_direct: _DirectJson | None = None


def info_line(log: Any, event: str, fields: dict[str, Any]) -> None:
    """``log.info(event, **fields)``: the same line, for less than half the cost.

    For the line every request writes (``service.access_log``). structlog's bound logger
    spends more of a line's time in its generic layers (the lazy proxy, the method lookup,
    the context copy) than in the processors. While the configuration ``configure_logging``
    made is in force, the line is made here by that configuration's own processors, in order,
    and handed to its writer. Anything else (the console format, ``capture_logs`` in tests, a
    reconfiguration) goes through ``log.info``.
    """
    direct = _direct
    config = structlog.get_config()
    if (
        direct is None
        or config["processors"] is not direct.processors
        or config["logger_factory"] is not direct.logger_factory
        or tuple(direct.processors) != direct.as_configured
    ):
        log.info(event, **fields)
        return
    if direct.min_level > logging.INFO:
        return
    line: Any = {**fields, "event": event}
    try:
        for processor in direct.as_configured:
            line = processor(direct.writer, "info", line)
    except structlog.DropEvent:
        return
    direct.writer.msg(line)
