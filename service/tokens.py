"""Callback-URL tokens: the source check for providers that sign nothing.

A token is ``<url_id>.<expiry>.<signature>``, signed with itsdangerous under a salt that names
the provider, so a token minted for Evolink does not verify on ``/callbacks/apiframe/``. The
``url_id`` points at metadata kept in the store, which keeps URLs short (Evolink allows 2,048
characters). Several keys may be configured, newest first: the newest signs, all verify, so
keys rotate without breaking URLs already handed to providers.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Sequence

from itsdangerous import BadData, Signer
from itsdangerous.encoding import base64_decode, base64_encode

from service.errors import Unauthorized

DEFAULT_TTL_SECONDS = 7 * 24 * 3600
VERIFIED_CACHE_SIZE = 10_000
MAX_TTL_SECONDS = 365 * 24 * 3600


class InvalidToken(Unauthorized):
    """The callback URL's token is not one this relay minted for this provider."""

    code = "invalid_token"


class TokenExpired(Unauthorized):
    """The callback URL's token has expired; mint a new callback URL."""

    code = "token_expired"


class CallbackTokens:
    """Mints and verifies callback-URL tokens.

    Args:
        keys: signing keys, newest first (the newest signs, every key verifies).
    """

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        # itsdangerous signs with the *last* key and tries them all, newest first.
        self._keys = list(reversed(keys))
        self._signers: dict[str, Signer] = {}
        # Providers post to the same URL again and again (progress, retries): a token whose
        # signature was verified once is remembered (its expiry is still checked every time).
        # Only exact tokens that verified are cached, so a forged one never hits.
        self._verified: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()

    def _signer(self, provider: str) -> Signer:
        signer = self._signers.get(provider)
        if signer is None:
            signer = Signer(
                self._keys,
                salt=f"callback-url:{provider}",
                key_derivation="hmac",
                digest_method=hashlib.sha256,
            )
            self._signers[provider] = signer
        return signer

    @staticmethod
    def new_url_id() -> str:
        return secrets.token_urlsafe(12)

    def mint(self, provider: str, url_id: str, expires_at: int) -> str:
        """The token for ``url_id``, valid on ``/callbacks/<provider>/`` until ``expires_at``."""
        return self._signer(provider).sign(f"{url_id}.{expires_at:x}").decode()

    def verify(self, provider: str, token: str, now: float) -> str:
        """Return the ``url_id`` a valid token refers to.

        Raises:
            InvalidToken: tampered, malformed, or minted for another provider or with a retired key.
            TokenExpired: genuine but past its expiry.
        """
        if len(token) > 512:
            raise InvalidToken()
        cached = self._verified.get((provider, token))
        if cached is None:
            try:
                # base64 lets the last character of a signature carry unused bits, so several
                # spellings decode to the same bytes: only the one the relay minted is accepted
                # (each other spelling would be a way around the cache, and a second URL).
                signature = token.rpartition(".")[2]
                if base64_encode(base64_decode(signature)).decode() != signature:
                    raise InvalidToken()
                value = self._signer(provider).unsign(token).decode()
                url_id, expiry = value.rsplit(".", 1)
                cached = (url_id, int(expiry, 16))
            except (BadData, ValueError, UnicodeError):
                raise InvalidToken() from None
            self._verified[(provider, token)] = cached
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        url_id, expires_at = cached
        if now >= expires_at:
            raise TokenExpired()
        return url_id
