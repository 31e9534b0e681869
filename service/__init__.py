"""callback-relay: one durable, verified door for AI-generation provider callbacks."""

from __future__ import annotations

__version__ = "0.1.0"
