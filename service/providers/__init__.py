"""The providers the relay knows, by the name used in callback URLs, watches and events."""

from __future__ import annotations

from service.errors import NotFound
from service.providers.apiframe import Apiframe
from service.providers.base import Provider
from service.providers.evolink import Evolink
from service.providers.reve_art import ReveArt
from service.providers.rivya import Rivya

__all__ = ["PROVIDERS", "Provider", "UnknownProvider", "get_provider"]

PROVIDERS: dict[str, Provider] = {
    provider.name: provider for provider in (Evolink(), Apiframe(), Rivya(), ReveArt())
}


class UnknownProvider(NotFound):
    """The relay knows no provider of this name."""

    code = "unknown_provider"


def get_provider(name: str) -> Provider:
    """The provider named ``name``; raises ``UnknownProvider``."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UnknownProvider(
            f"Unknown provider; the relay knows: {', '.join(sorted(PROVIDERS))}."
        ) from None
