"""Scoped API keys: who may call what on the admin API, ``/metrics`` and the console.

Four scopes, each including the ones before it (``read < mint < operate < admin``):

- ``read``: every GET of the admin API but the keys' list, and ``/metrics`` (a dashboard, a
  scraper);
- ``mint``: also mint callback URLs and register or cancel watches (an application server,
  which can read back what it made);
- ``operate``: also replays, redeliveries, archive retries and the decisions on watches and
  suspect callbacks (the person on call); the lowest scope the console signs in with;
- ``admin``: also subscribers and keys.

Every admin operation names the scope it needs (``service.operations``); a key of a smaller
scope is answered 403 ``insufficient_scope`` naming it. ``RELAY_ADMIN_TOKEN`` stays the
bootstrap key of scope ``admin``.

A key is ``rk_<scope>_<43 characters>`` (256 random bits), shown once when created. The store
keeps its SHA-256 only: the key is random and long, so a fast hash is the right one (there is
nothing to stretch), and a presented key is found by its hash; what an index lookup's timing
could tell is about the hash of a 256-bit secret, which helps no one guess it. The scope in
the key's text is for people reading a configuration file; the store's record decides.
``last_used_at`` is written at most once a minute per key (``TOUCH_EVERY``), not per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from service import ids
from service.errors import Forbidden, InvalidInput, NotFound
from service.store.records import ApiKey

if TYPE_CHECKING:  # service.relay imports the HTTP layer, which imports this module
    from service.relay import Relay

Scope = Literal["read", "mint", "operate", "admin"]
#: In order: each scope includes the ones before it.
SCOPES: tuple[Scope, ...] = get_args(Scope)
_RANK: dict[str, int] = {scope: rank for rank, scope in enumerate(SCOPES)}
#: Scopes the ops console signs in with.
CONSOLE_SCOPES: tuple[Scope, ...] = ("operate", "admin")
#: ``last_used_at`` is written at most this often per key (seconds).
TOUCH_EVERY = 60.0
KEY_PREFIX = "rk_"


class InsufficientScope(Forbidden):
    """The key is valid, but its scope does not allow this operation."""

    code = "insufficient_scope"


@dataclass(frozen=True)
class Credential:
    """Who a request authenticated as: a scope, and the key (None: ``RELAY_ADMIN_TOKEN``)."""

    scope: Scope
    key_id: str | None = None

    def allows(self, needed: Scope) -> bool:
        return allows(self.scope, needed)


def allows(held: str, needed: Scope) -> bool:
    """Whether a key of scope ``held`` may do what needs ``needed``."""
    return _RANK.get(held, -1) >= _RANK[needed]


def require(credential: Credential, needed: Scope) -> None:
    """Refuse (403 ``insufficient_scope``) a credential whose scope is below ``needed``."""
    if not credential.allows(needed):
        raise InsufficientScope(
            f"This needs a key of scope {needed} (or above); this key's scope is "
            f"{credential.scope}.",
        )


def hash_key(key: str) -> str:
    """The SHA-256 of a key, in hex: what the store keeps and looks keys up by."""
    return hashlib.sha256(key.encode()).hexdigest()


def checked_scope(value: str) -> Scope:
    for scope in SCOPES:
        if value == scope:
            return scope
    raise InvalidInput(f"scope must be one of: {', '.join(SCOPES)}.", code="invalid_scope")


async def create(relay: Relay, scope: str, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key of ``scope``: its record (kept) and the key itself (shown once, never kept)."""
    checked = checked_scope(scope)
    key = f"{KEY_PREFIX}{checked}_{secrets.token_urlsafe(32)}"
    record = ApiKey(
        id=ids.new_id("key"),
        name=name,
        scope=checked,
        key_hash=hash_key(key),
        created_at=relay.clock(),
    )
    await relay.store.create_api_key(record)
    return record, key


async def revoke(relay: Relay, key_id: str) -> ApiKey:
    """Revoke a key (and end the console sessions signed in with it); 404 if there is none."""
    record = await relay.store.revoke_api_key(key_id, relay.clock())
    if record is None:
        raise NotFound("No API key with this id.")
    return record


def is_admin_token(relay: Relay, presented: str) -> bool:
    """Whether ``presented`` is ``RELAY_ADMIN_TOKEN``, compared in constant time."""
    expected = relay.settings.admin_token
    return expected is not None and hmac.compare_digest(presented.encode(), str(expected).encode())


async def authenticate(relay: Relay, presented: str) -> Credential | None:
    """The credential ``presented`` stands for: the admin token, or a live key; None for
    anything else (unknown, revoked). A key's use is recorded at most once a minute."""
    if is_admin_token(relay, presented):
        return Credential("admin")
    if not presented.startswith(KEY_PREFIX):
        return None
    record = await relay.store.api_key_by_hash(hash_key(presented))
    if record is None or record.revoked_at is not None:
        return None
    now = relay.clock()
    if record.last_used_at is None or now - record.last_used_at >= TOUCH_EVERY:
        await relay.store.touch_api_key(record.id, now, TOUCH_EVERY)
    return Credential(checked_scope(record.scope), record.id)
