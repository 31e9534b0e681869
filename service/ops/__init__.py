"""The ops console: server-rendered pages at ``/ops`` for the people on call."""

from __future__ import annotations

from service.ops.console import routes

__all__ = ["routes"]
