"""Scoped API keys: what creating one takes, and a key as shown (never the key again)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from service.shapes.base import Shape, Time

ScopeName = Annotated[
    Literal["read", "mint", "operate", "admin"],
    Meta(description="read < mint < operate < admin: each includes the ones before it."),
]
#: A label for people: printable, one line.
KeyName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class NewKey(Shape, kw_only=True):
    """``POST /v1/keys``."""

    error_code: ClassVar[str] = "invalid_key"
    field_codes: ClassVar[dict[str, str]] = {"scope": "invalid_scope", "name": "invalid_name"}

    scope: ScopeName
    name: KeyName | None = None


class Key(msgspec.Struct, kw_only=True):
    """An API key as listed: what it is for, never the key itself."""

    id: str
    name: str | None
    scope: ScopeName
    created_at: Time
    last_used_at: Annotated[Time | None, Meta(description="Written at most once a minute.")]
    revoked_at: Time | None


class KeyWithSecret(Key, kw_only=True):
    """A key just created: ``key`` is shown here, once, and kept nowhere."""

    key: Annotated[str, Meta(description="The bearer token: `rk_<scope>_...`. Shown once.")]


class KeyList(msgspec.Struct, kw_only=True):
    """Every key, revoked ones included, oldest first."""

    items: list[Key]
