"""callback-relay: one durable, verified door for AI-generation provider callbacks."""

__version__ = "0.1.0"
