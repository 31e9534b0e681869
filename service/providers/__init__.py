"""The providers the relay receives callbacks from, by the name used in callback URLs."""

from __future__ import annotations

from service.errors import NotFound
from service.providers.apiframe import Apiframe
from service.providers.base import Provider
from service.providers.evolink import Evolink

PROVIDERS: dict[str, Provider] = {provider.name: provider for provider in (Evolink(), Apiframe())}


class UnknownProvider(NotFound):
    """The relay receives no callbacks for this provider."""

    code = "unknown_provider"


def get_provider(name: str) -> Provider:
    """The provider named ``name``; raises ``UnknownProvider``."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UnknownProvider(
            f"Unknown provider; callbacks are received for: {', '.join(sorted(PROVIDERS))}."
        ) from None
