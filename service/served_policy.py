"""The policy a relay serves with, recorded in its store so the ``relay`` CLI agrees with it.

The CLI works on the store directly (it answers when the HTTP API is down, and needs no key),
but it runs in another shell, with other ``RELAY_*`` variables: left alone it would refuse a
loopback subscriber the server allows, or mint URLs on its own ``RELAY_PUBLIC_URL``. So each
start of the relay (``service.app``) records here what the CLI decides with, and every
store-working command takes it over its own environment (``adopt``):

- ``public_url``: the base of minted callback URLs (``relay mint-url``);
- ``allow_private_targets`` and ``target_allowlist``: which subscriber URLs are allowed
  (``relay subscribers add``);
- fingerprints (an HMAC of a constant, not the secrets) of the signing key and the admin token:
  the CLI cannot take secrets from the store, but it can tell that its own are not the server's
  and refuse to mint a URL the relay would refuse (``relay mint-url``), or to print a token it
  would not accept (``relay admin-token``).

No relay started on this store yet: the CLI uses its own settings and says so. Several replicas
with different settings: the last one started is recorded (they should not differ).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from dataclasses import asdict, dataclass

from service.clock import Clock, rfc3339
from service.settings import Settings
from service.store.base import Store

#: The ``relay_meta`` key the policy is kept under.
META_KEY = "served_policy"


def fingerprint(secret: str) -> str:
    """Which secret it is, without what it is: 16 hex digits of an HMAC of a constant."""
    return hmac.new(secret.encode(), b"callback-relay served_policy", hashlib.sha256).hexdigest()[
        :16
    ]


@dataclass(frozen=True)
class ServedPolicy:
    public_url: str
    allow_private_targets: bool
    target_allowlist: tuple[str, ...]
    signing_key: str
    admin_token: str
    recorded_at: float

    @classmethod
    def of(cls, settings: Settings, now: float) -> ServedPolicy:
        """The policy of a started relay's settings (its secrets resolved)."""
        assert settings.admin_token is not None and settings.secret_keys  # noqa: S101 - resolved
        return cls(
            public_url=settings.public_url,
            allow_private_targets=settings.allow_private_targets,
            target_allowlist=tuple(str(net) for net in settings.target_allowlist),
            signing_key=fingerprint(str(settings.secret_keys[0])),
            admin_token=fingerprint(str(settings.admin_token)),
            recorded_at=now,
        )


async def record(store: Store, settings: Settings, clock: Clock) -> None:
    """Record the policy a relay starting with ``settings`` serves with."""
    await store.set_meta(META_KEY, json.dumps(asdict(ServedPolicy.of(settings, clock()))))


async def recorded(store: Store) -> ServedPolicy | None:
    """The policy the last relay started on ``store`` serves with, or None (none started, or
    recorded by a version that wrote something else)."""
    raw = await store.get_meta(META_KEY)
    if raw is None:
        return None
    try:
        fields = json.loads(raw)
        policy = ServedPolicy(**fields | {"target_allowlist": tuple(fields["target_allowlist"])})
        for net in policy.target_allowlist:
            ipaddress.ip_network(net, strict=False)
    except (ValueError, TypeError, KeyError):
        return None
    texts = (policy.public_url, policy.signing_key, policy.admin_token)
    if (
        not all(isinstance(text, str) for text in texts)
        or not isinstance(policy.allow_private_targets, bool)
        or not isinstance(policy.recorded_at, int | float)
    ):
        return None
    return policy


@dataclass(frozen=True)
class Adopted:
    """A CLI's settings with the served policy taken over; what it changed, to say it."""

    settings: Settings
    policy: ServedPolicy | None
    #: Names of this shell's settings that differed from the served ones (now replaced).
    replaced: tuple[str, ...] = ()

    def note(self, *names: str) -> str | None:
        """A line for stderr when this shell's ``names`` settings were not the ones used, or
        when no relay recorded any (None: the shell's agreed with the server's)."""
        if self.policy is None:
            return (
                "relay: no relay has started on this store yet: using this shell's settings"
                " (RELAY_PUBLIC_URL, RELAY_ALLOW_PRIVATE_TARGETS, RELAY_TARGET_ALLOWLIST)"
            )
        differing = [name for name in names if name in self.replaced]
        if not differing:
            return None
        return (
            f"relay: using the running relay's {', '.join(differing)}"
            f" (recorded at its start, {rfc3339(self.policy.recorded_at)}), not this shell's"
        )

    def secret_mismatch(self, name: str) -> str | None:
        """Why a secret of this shell (``signing_key``, ``admin_token``) is not the server's,
        or None."""
        if self.policy is None:
            return None
        if name == "signing_key":
            ours = fingerprint(str(self.settings.secret_keys[0]))
            if ours != self.policy.signing_key:
                return (
                    "this shell's signing key is not the running relay's: set the same"
                    " RELAY_SECRET_KEY (or RELAY_SECRET_KEY_FILE) as the server, or leave both"
                    " unset (the key kept in the store)"
                )
        elif fingerprint(str(self.settings.admin_token)) != self.policy.admin_token:
            return (
                "the running relay's admin token is not this shell's: it is the server's"
                " RELAY_ADMIN_TOKEN (or RELAY_ADMIN_TOKEN_FILE); read it there"
            )
        return None


def adopt(settings: Settings, policy: ServedPolicy | None) -> Adopted:
    """``settings`` (a CLI's) with the served ``policy`` in place of its own."""
    if policy is None:
        return Adopted(settings, None)
    served = {
        "RELAY_PUBLIC_URL": policy.public_url,
        "RELAY_ALLOW_PRIVATE_TARGETS": policy.allow_private_targets,
        "RELAY_TARGET_ALLOWLIST": tuple(
            ipaddress.ip_network(net, strict=False) for net in policy.target_allowlist
        ),
    }
    ours = {
        "RELAY_PUBLIC_URL": settings.public_url,
        "RELAY_ALLOW_PRIVATE_TARGETS": settings.allow_private_targets,
        "RELAY_TARGET_ALLOWLIST": settings.target_allowlist,
    }
    replaced = tuple(name for name in served if served[name] != ours[name])
    adopted = settings.with_changes(
        public_url=policy.public_url,
        allow_private_targets=policy.allow_private_targets,
        target_allowlist=served["RELAY_TARGET_ALLOWLIST"],
    )
    return Adopted(adopted, policy, replaced)
