"""Logging: the one place structlog and the standard library logging are configured.

Production lines are one JSON object each; ``RELAY_LOG_FORMAT=console`` gives readable lines
on a terminal. uvicorn's own loggers go through the same renderer. uvicorn's access log is
switched off by the app: ``service.access_log`` writes one with callback tokens masked.

Every line, whoever writes it, has its secrets (``_SECRET_KEYS``) replaced by ``***`` and the
token of any callback URL in it masked (``/callbacks/evolink/***``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import re
import sys
import threading
import time
from typing import Any, TextIO

import orjson
import structlog

from service.clock import utc_second

#: Keys whose values are never written, whoever binds them.
_SECRET_KEYS = frozenset(
    {"token", "secret", "admin_token", "authorization", "secret_key", "api_key"}
)
# A callback URL's token, wherever it appears; one already masked (``***``) is left alone.
# (A token ends where a URL or a quoted string would: ``/``, ``?``, quotes, white space, or
# a terminal's colour code.)
_CALLBACK_PATH = re.compile(r"(/callbacks/[^/\s?]+/)(?!\*\*\*(?![^/\s?\"'\x1b]))[^/\s?\"'\x1b]+")


def _masked(found: re.Match[str]) -> str:
    return found[1] + "***"


def mask_callback_path(text: str) -> str:
    """``/callbacks/evolink/<token>`` -> ``/callbacks/evolink/***``, every occurrence."""
    # (A function, not the template r"\1***": re runs a template through Python code on every
    # call, match or not, which cost ten times the search; a function runs only on a match.)
    return _CALLBACK_PATH.sub(_masked, text)


def _add_timestamp(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """``timestamp``: UTC to the microsecond, ``2026-01-01T00:00:00.123456Z``, as structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes it."""
    # (TimeStamper builds a datetime and formats all of it for every line: about a fifth of a
    # line's cost. Here the date and time to the second are formatted once a second.)
    now = time.time()
    seconds = math.floor(now)
    event_dict["timestamp"] = f"{utc_second(seconds)}.{int((now - seconds) * 1e6):06d}Z"
    return event_dict


def _redact_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "***"
    return event_dict


def _mask_callback_tokens(_logger: Any, _method: str, line: str) -> str:
    # On the rendered line, after every value (exception text included) has been written into
    # it: one search per line instead of a look at every value of every line.
    return mask_callback_path(line)


def _orjson_text(value: Any, **_kwargs: Any) -> str:
    # orjson is several times faster than the json module; values it does not know (an
    # exception, a path) are written with str().
    return orjson.dumps(value, default=str).decode()


class LineWriter:
    """structlog's logger: writes rendered lines to ``stream``, those of one event-loop
    iteration together.

    On an event loop, a line is kept until the loop's current iteration ends, then written
    with every other line it logged, in one write and flush (a write and flush per line cost
    about 3 us, at thousands of callbacks a second more than rendering the line). Off a loop
    (the CLI, other threads), a line is written at once, with any a loop is about to write.
    Lines still kept at a normal exit are written on the way out; a killed process loses at
    most one iteration's lines.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._lock = threading.Lock()  # (in tests, loops of several threads log)
        atexit.register(self.flush)

    def msg(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            if len(self._lines) > 1:
                return  # the first line since the last write has arranged the next one
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread
            self.flush()
        else:
            loop.call_soon(self.flush)

    # The method names structlog's bound logger calls.
    debug = info = warning = error = critical = exception = msg

    def flush(self) -> None:
        """Write the lines kept so far."""
        with self._lock:
            lines, self._lines = self._lines, []
            if lines:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()


def configure_logging(
    log_format: str = "json", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library's root logger to write lines of
    ``log_format`` (``json`` or ``console``) at ``level`` and above to ``stream`` (stderr by
    default), through a ``LineWriter``."""
    stream = stream if stream is not None else sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_timestamp,
        _redact_secrets,
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if log_format == "console"
        else structlog.processors.JSONRenderer(serializer=_orjson_text)
    )
    rendering: list[Any] = [renderer, _mask_callback_tokens]
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    # The relay's own lines go from structlog straight to the stream (a standard library
    # LogRecord per line would cost about half of each line's time); only foreign loggers
    # (uvicorn) go through the handler below.
    writer = LineWriter(stream)
    structlog.configure(
        processors=[*shared, *rendering],
        logger_factory=lambda *_args: writer,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
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
