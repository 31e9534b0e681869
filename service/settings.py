"""Configuration: the only module that reads the environment.

Every setting is a ``RELAY_*`` variable. ``Settings.from_env()`` reads them once; the rest of
the relay receives the frozen ``Settings`` object. Secrets that are not configured
(``RELAY_SECRET_KEY``, ``RELAY_ADMIN_TOKEN``) are filled in at start-up from the store, which
generates and persists them on first start (see ``service.secrets``).
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from starlette.datastructures import Secret

PREFIX = "RELAY_"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Every setting with its default and a one-line description; ``relay --help`` prints these.
DOCUMENTED: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("sqlite:///./relay.db", "sqlite:///path or postgresql://user@host/db"),
    "PUBLIC_URL": (
        "http://127.0.0.1:<port served>",
        "base of minted callback URLs (the default follows --port)",
    ),
    "SECRET_KEY": (
        "(generated, kept in the store)",
        "token signing keys, newest first, comma-separated",
    ),
    "ADMIN_TOKEN": ("(generated, kept in the store)", "bearer token of the admin API"),
    "MAX_BODY_BYTES": ("1048576", "largest callback body accepted"),
    "HEADER_TIMEOUT": ("5", "seconds a client may take to send a request's head"),
    "BODY_TIMEOUT": ("10", "seconds a client may take to send a request's body after its head"),
    "MAX_CONNECTIONS": ("(half of ulimit -n)", "client connections held at once"),
    "BODY_MEMORY": ("67108864", "bytes of request bodies held at once; past it 503 server_busy"),
    "LOG_FORMAT": ("json", "json or console"),
    "LOG_LEVEL": ("info", "debug, info, warning, error"),
    "TRUSTED_PROXIES": ("", "CIDRs whose X-Forwarded-For is believed"),
    "APIFRAME_API_KEY": ("", "Apiframe API key: polls GET /v2/jobs/{id}; signature checks"),
    "APIFRAME_SIGNATURE": (
        "optional",
        "Apiframe v2 X-Webhook-Signature: required, or optional (checked when present)",
    ),
    "APIFRAME_WEBHOOK_SECRET": ("", "checks Apiframe v1 x-webhook-secret when set"),
    "<PROVIDER>_ALLOWED_IPS": ("", "CIDRs allowed to post callbacks for that provider"),
    "RETRY_DELAYS": ("1,2,4", "seconds between delivery attempts; then the delivery is failed"),
    "DELIVERY_TIMEOUT": ("10", "seconds one delivery attempt may take"),
    "DELIVERY_CONCURRENCY": ("512", "deliveries one process attempts at once, shared fairly"),
    "ALLOW_PRIVATE_TARGETS": ("false", "allow subscriber URLs on private/loopback addresses"),
    "TARGET_ALLOWLIST": ("", "CIDRs subscribers may use even though they are private"),
    "RETENTION_DAYS": ("30", "delivered events and attempts older than this are pruned"),
    "FAILED_RETENTION_DAYS": ("(never)", "failed deliveries (and events) pruned this long after"),
    "RUN_WORKER": ("true", "serve also delivers (false = API only, like --no-worker)"),
    "MIGRATE_ON_START": ("true", "apply schema migrations at start (false = --no-migrate)"),
    "EVOLINK_BASE_URL": ("https://api.evolink.ai", "Evolink status API (GET /v1/tasks/{id})"),
    "EVOLINK_API_KEY": ("", "Evolink API key: watches, and confirmation of callbacks"),
    "EVOLINK_CONFIRM": ("true", "confirm terminal Evolink callbacks with the API (needs the key)"),
    "APIFRAME_BASE_URL": ("https://api.apiframe.ai", "Apiframe v2 API (GET /v2/jobs/{id})"),
    "RIVYA_BASE_URL": ("https://rivya.ai", "Rivya API (GET /api/v1/generations/{id})"),
    "RIVYA_API_KEY": ("", "Rivya API key (rvya_sk_...): watches"),
    "RIVYA_WEBHOOK_SECRET": ("", "Rivya signing secret (whsec_...): checks webhook signatures"),
    "REVE_ART_BASE_URL": ("https://reve-art.com", "Reve Art API (GET /v1/reve-image/status/{id})"),
    "REVE_ART_API_KEY": ("", "Reve Art API key: watches"),
    "WATCH_BACKOFF": ("2,60", "first and longest seconds between a watch's polls (doubling)"),
    "WATCH_DEADLINE": ("86400", "seconds a watch polls unless registered with deadline_seconds"),
    "PROVIDER_TIMEOUT": ("10", "seconds one request to a provider's status API may take"),
    "HOLDS_PER_URL": ("100", "held (unconfirmed) callbacks of distinct tasks per callback URL"),
    "HOLDS_MAX": ("1000", "held (unconfirmed) callbacks of distinct tasks in all"),
    "HOLD_DEADLINE": ("3600", "seconds a held callback waits for the API to confirm it"),
    "EVOLINK_API_RATE": ("60", "requests to Evolink's API per RELAY_API_RATE_WINDOW, all replicas"),
    "APIFRAME_API_RATE": ("60", "requests to Apiframe's API per RELAY_API_RATE_WINDOW"),
    "RIVYA_API_RATE": ("60", "requests to Rivya's API per RELAY_API_RATE_WINDOW"),
    "REVE_ART_API_RATE": ("4", "requests to Reve Art's API per window (its limit: 10 a minute)"),
    "API_RATE_WINDOW": ("60", "seconds of the providers' request budgets (a sliding window)"),
    "METRICS_PUBLIC": ("false", "serve /metrics without the admin token (true for a scraper)"),
    "ARCHIVE_URL": ("", "archive outputs: file:///dir, s3://bucket/prefix, gs://, az:// (off)"),
    "ARCHIVE_PUBLIC_URL": ("", "public base of archived objects (else <PUBLIC_URL>/archive/...)"),
    "ARCHIVE_PROVIDERS": ("(all)", "comma-separated providers whose outputs are archived"),
    "ARCHIVE_MAX_BYTES": ("2147483648", "largest output archived; a larger one is not kept"),
    "ARCHIVE_DEADLINE": ("3600", "seconds an event waits for its outputs; then sent unarchived"),
    "ARCHIVE_TIMEOUT": ("900", "seconds one output's download may take in all"),
    "ARCHIVE_RETENTION_DAYS": ("(RETENTION_DAYS)", "days archived objects are kept; 0: forever"),
    "ARCHIVE_CONCURRENCY": ("4", "archive jobs one process runs at once"),
    "ARCHIVE_ENDPOINT": ("", "S3-compatible endpoint (MinIO, R2); else AWS_ENDPOINT_URL"),
    "ARCHIVE_REGION": ("", "S3 region; else AWS_REGION"),
    "ARCHIVE_ACCESS_KEY_ID": ("", "S3 access key; else AWS_ACCESS_KEY_ID"),
    "ARCHIVE_SECRET_ACCESS_KEY": ("", "S3 secret key; else AWS_SECRET_ACCESS_KEY"),
    "ARCHIVE_ALLOW_HTTP": ("false", "allow an http:// object-store endpoint (local MinIO)"),
    "ADMIN_LISTEN": (
        "(off: one listener)",
        "host:port for /v1, /ops, /metrics, /openapi.json (like --admin-host/--admin-port)",
    ),
    "PORT": ("8000", "port `relay serve` listens on (--port overrides; the image's health check)"),
    "<SECRET>_FILE": (
        "(unset)",
        "read secret <SECRET> from this file (e.g. RELAY_ADMIN_TOKEN_FILE=/run/secrets/admin):"
        " ADMIN_TOKEN, SECRET_KEY, *_API_KEY, *_WEBHOOK_SECRET, ARCHIVE_*_KEY*",
    ),
}

#: The settings that hold secrets. Each can instead be read from a file named by
#: ``RELAY_<NAME>_FILE``, the way Docker and Kubernetes mount secrets (``/run/secrets/...``), so
#: the value need not sit in the process environment or the deploy files.
SECRET_SETTINGS = (
    "DATABASE_URL",  # a PostgreSQL URL carries its password
    "ADMIN_TOKEN",
    "SECRET_KEY",
    "APIFRAME_API_KEY",
    "APIFRAME_WEBHOOK_SECRET",
    "EVOLINK_API_KEY",
    "RIVYA_API_KEY",
    "RIVYA_WEBHOOK_SECRET",
    "REVE_ART_API_KEY",
    "ARCHIVE_ACCESS_KEY_ID",
    "ARCHIVE_SECRET_ACCESS_KEY",
)


class ConfigError(ValueError):
    """A RELAY_* variable holds a value the relay cannot use."""


def _with_secret_files(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` (prefix stripped) with each ``<SECRET>_FILE`` read into ``<SECRET>``.

    The file's content is the value, less its trailing newline. Errors name the variable and
    the path, never the content.

    Raises:
        ConfigError: both ``<SECRET>`` and ``<SECRET>_FILE`` are set, or the file cannot be
            read or is empty.
    """
    resolved = dict(env)
    for name in SECRET_SETTINGS:
        path = env.get(f"{name}_FILE", "").strip()
        if not path:
            continue
        if env.get(name, "").strip():
            raise ConfigError(
                f"{PREFIX}{name} and {PREFIX}{name}_FILE are both set; set only one of them"
            )
        try:
            with open(path, encoding="utf-8") as file:
                value = file.read().rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(f"{PREFIX}{name}_FILE: {path} is not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(
                f"{PREFIX}{name}_FILE: cannot read {path}: {exc.strerror or exc}"
            ) from None
        if not value.strip():
            raise ConfigError(f"{PREFIX}{name}_FILE: {path} is empty")
        resolved[name] = value
    return resolved


class ListenAddress(NamedTuple):
    """Where a listener binds: an interface (a name, or an IPv4 or IPv6 address) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _listen_address(name: str, raw: str) -> ListenAddress | None:
    """``host:port`` (``[v6 address]:port``) -> the address; empty -> None."""
    text = raw.strip()
    if not text:
        return None
    host, _colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without its brackets: where it ends is ambiguous
    if not host or not port.isdigit() or int(port) > 65_535:
        raise ConfigError(
            f"{PREFIX}{name} must be host:port (e.g. 127.0.0.1:9000 or [::1]:9000), got {raw!r}"
        )
    return ListenAddress(host, int(port))


def _networks(name: str, raw: str) -> tuple[IPNetwork, ...]:
    try:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in raw.split(",")
            if part.strip()
        )
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name}: {exc}") from exc


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{PREFIX}{name} must be true or false, got {raw!r}")


def _seconds(name: str, raw: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name} must be comma-separated seconds, got {raw!r}") from exc
    if any(not 0 <= value <= 86_400 for value in values):
        raise ConfigError(f"{PREFIX}{name}: each value must be from 0 to 86400 seconds")
    return values


def _int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{PREFIX}{name} must be positive, got {value}")
    return value


def _failed_retention_days(raw: str, retention_days: int) -> int | None:
    if not raw.strip():
        return None
    days = _int("FAILED_RETENTION_DAYS", raw.strip())
    if days < retention_days:
        raise ConfigError(
            f"{PREFIX}FAILED_RETENTION_DAYS ({days}) must not be shorter than"
            f" {PREFIX}RETENTION_DAYS ({retention_days}): failed deliveries wait for an operator"
        )
    return days


def _delivery_timeout(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}DELIVERY_TIMEOUT must be seconds, got {raw!r}") from None
    if not 0 < value <= 300:
        raise ConfigError(f"{PREFIX}DELIVERY_TIMEOUT must be from 0 to 300 seconds, got {value}")
    return value


def _backoff(raw: str) -> tuple[float, float]:
    values = _seconds("WATCH_BACKOFF", raw)
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise ConfigError(
            f"{PREFIX}WATCH_BACKOFF must be two seconds, first and longest, e.g. 2,60; got {raw!r}"
        )
    return values[0], values[1]


def _positive_seconds(name: str, raw: str, maximum: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be seconds, got {raw!r}") from None
    if not 0 < value <= maximum:
        raise ConfigError(f"{PREFIX}{name} must be from 0 to {maximum:g} seconds, got {value}")
    return value


def _base_url(name: str, raw: str) -> str:
    url = raw.strip().rstrip("/")
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"{PREFIX}{name} must be an http(s) URL, got {raw!r}")
    return url


#: Values of RELAY_APIFRAME_SIGNATURE (see ``service.providers.apiframe``).
SIGNATURE_MODES = ("required", "optional")


def _signature_mode(raw: str, api_key: Secret | None) -> str:
    mode = raw.strip().lower() or "optional"
    if mode not in SIGNATURE_MODES:
        raise ConfigError(f"{PREFIX}APIFRAME_SIGNATURE must be required or optional, got {raw!r}")
    if mode == "required" and api_key is None:
        raise ConfigError(
            f"{PREFIX}APIFRAME_SIGNATURE=required needs {PREFIX}APIFRAME_API_KEY: Apiframe signs "
            "with the key the job was submitted with"
        )
    return mode


def _webhook_secret(name: str, raw: str) -> Secret | None:
    value = raw.strip()
    if not value:
        return None
    try:
        base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a whsec_ secret (base64 after whsec_)") from None
    return Secret(value)


#: Requests a minute to each provider's API. Reve Art allows 10 a minute per account, shared
#: with the user's own generate calls ("速率限制:每分钟 10 个请求"): the relay takes 4. The
#: other pages document no limit: 60 a minute is an assumption, conservative for an API that
#: answers one status request per task.
DEFAULT_API_RATES: Mapping[str, int] = {
    "evolink": 60,
    "apiframe": 60,
    "rivya": 60,
    "reve-art": 4,
}


#: Object-store URL schemes ``RELAY_ARCHIVE_URL`` may use (``service.archive_store``).
ARCHIVE_SCHEMES = ("file", "s3", "s3a", "gs", "az", "abfs", "abfss")


@dataclass(frozen=True)
class ArchiveSettings:
    """Where and how outputs are archived (``service.archive_store``, ``service.archiver``)."""

    url: str
    #: Base URL of the archived objects as subscribers fetch them, or None: the relay serves
    #: them at ``<public_url>/archive/<signed key>``.
    public_url: str | None = None
    #: Providers whose outputs are archived; None: all.
    providers: tuple[str, ...] | None = None
    max_bytes: int = 2 * 1024**3
    deadline: float = 3600.0
    timeout: float = 900.0
    #: Days an archived object is kept; None: forever.
    retention_days: int | None = 30
    concurrency: int = 4
    #: Object-store options (endpoint, region, keys) beside the AWS_* variables.
    options: Mapping[str, str] = field(default_factory=dict, repr=False)
    allow_http: bool = False

    def wants(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers


def _archive_settings(env: Mapping[str, str], retention_days: int) -> ArchiveSettings | None:
    url = env.get("ARCHIVE_URL", "").strip()
    if not url:
        return None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ARCHIVE_SCHEMES:
        raise ConfigError(
            f"{PREFIX}ARCHIVE_URL must start with one of"
            f" {', '.join(s + '://' for s in ARCHIVE_SCHEMES)}; got {url!r}"
        )
    public = env.get("ARCHIVE_PUBLIC_URL", "").strip()
    providers = tuple(p.strip() for p in env.get("ARCHIVE_PROVIDERS", "").split(",") if p.strip())
    retention_raw = env.get("ARCHIVE_RETENTION_DAYS", "").strip()
    retention: int | None = retention_days
    if retention_raw:
        try:
            retention = int(retention_raw)
        except ValueError:
            raise ConfigError(
                f"{PREFIX}ARCHIVE_RETENTION_DAYS must be whole days (0: forever),"
                f" got {retention_raw!r}"
            ) from None
        if retention < 0:
            raise ConfigError(f"{PREFIX}ARCHIVE_RETENTION_DAYS must be 0 or more, got {retention}")
        retention = retention or None
    options = {
        key: value.strip()
        for name, key in (
            ("ARCHIVE_ENDPOINT", "endpoint"),
            ("ARCHIVE_REGION", "region"),
            ("ARCHIVE_ACCESS_KEY_ID", "access_key_id"),
            ("ARCHIVE_SECRET_ACCESS_KEY", "secret_access_key"),
        )
        for value in [env.get(name, "")]
        if value.strip()
    }
    return ArchiveSettings(
        url=url,
        public_url=_base_url("ARCHIVE_PUBLIC_URL", public) if public else None,
        providers=providers or None,
        max_bytes=_int("ARCHIVE_MAX_BYTES", env.get("ARCHIVE_MAX_BYTES", str(2 * 1024**3))),
        deadline=_positive_seconds(
            "ARCHIVE_DEADLINE", env.get("ARCHIVE_DEADLINE", "3600"), 30 * 86_400
        ),
        timeout=_positive_seconds("ARCHIVE_TIMEOUT", env.get("ARCHIVE_TIMEOUT", "900"), 86_400),
        retention_days=retention,
        concurrency=_int("ARCHIVE_CONCURRENCY", env.get("ARCHIVE_CONCURRENCY", "4")),
        options=options,
        allow_http=_bool("ARCHIVE_ALLOW_HTTP", env.get("ARCHIVE_ALLOW_HTTP", "")),
    )


@dataclass(frozen=True)
class Settings:
    """Everything the relay is configured with. Build it with ``from_env``."""

    database_url: str = "sqlite:///./relay.db"
    public_url: str = "http://127.0.0.1:8000"
    #: The port ``relay serve`` listens on unless ``--port`` says otherwise.
    port: int = 8000
    secret_keys: tuple[Secret, ...] = ()
    admin_token: Secret | None = None
    max_body_bytes: int = 1024 * 1024
    #: Slow clients (``service.http_protocol``): seconds to send a head, a body; connections
    #: held at once (None: half the open-file limit).
    header_timeout: float = 5.0
    body_timeout: float = 10.0
    max_connections: int | None = None
    #: Bytes of request bodies buffered at once across all requests (``service.http``).
    body_memory: int = 64 * 1024 * 1024
    log_format: str = "json"
    log_level: str = "info"
    trusted_proxies: tuple[IPNetwork, ...] = ()
    allowed_ips: Mapping[str, tuple[IPNetwork, ...]] = field(default_factory=dict)
    apiframe_api_key: Secret | None = None
    #: Apiframe v2 signatures: ``required`` or ``optional`` (checked when present).
    apiframe_signature: str = "optional"
    apiframe_webhook_secret: Secret | None = None
    retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)
    delivery_timeout: float = 10.0
    delivery_concurrency: int = 512
    allow_private_targets: bool = False
    target_allowlist: tuple[IPNetwork, ...] = ()
    retention_days: int = 30
    #: Failed deliveries wait for an operator; they (and their events) are pruned only once
    #: failed this long ago. None: never. At least ``retention_days``.
    failed_retention_days: int | None = None
    #: Apply schema migrations when the store opens (``relay serve --no-migrate`` turns it off).
    migrate_on_start: bool = True
    #: ``relay serve`` runs the delivery worker too (``--no-worker`` turns it off).
    run_worker: bool = True
    evolink_base_url: str = "https://api.evolink.ai"
    evolink_api_key: Secret | None = None
    evolink_confirm: bool = True
    apiframe_base_url: str = "https://api.apiframe.ai"
    rivya_base_url: str = "https://rivya.ai"
    rivya_api_key: Secret | None = None
    rivya_webhook_secret: Secret | None = None
    reve_art_base_url: str = "https://reve-art.com"
    reve_art_api_key: Secret | None = None
    #: Seconds before a watch's first poll, doubling after each poll up to the second value.
    watch_backoff: tuple[float, float] = (2.0, 60.0)
    watch_deadline: float = 86_400.0
    provider_timeout: float = 10.0
    #: Active holds (callbacks awaiting confirmation, one per task) per callback URL and in all:
    #: beyond them a new one is refused (429, 503) so forged callbacks cannot buy unbounded polls.
    holds_per_url: int = 100
    holds_max: int = 1000
    #: Seconds a hold polls for confirmation before it ends as suspect (no event).
    hold_deadline: float = 3600.0
    #: Requests the relay may send to each provider's API (watch polls, Evolink confirmations)
    #: per ``api_rate_window`` seconds, across all replicas (``RELAY_<PROVIDER>_API_RATE``).
    api_rates: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_API_RATES))
    api_rate_window: float = 60.0
    #: ``GET /metrics`` answers without the admin bearer token.
    metrics_public: bool = False
    #: Outputs archived before delivery (``RELAY_ARCHIVE_URL``); None: off.
    archive: ArchiveSettings | None = None
    #: Where ``relay serve`` serves the admin surface apart from the public listener
    #: (``service.listeners``); None: one listener serves everything.
    admin_listen: ListenAddress | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``RELAY_*`` variable from ``environ`` (default ``os.environ``).

        A secret setting may come from a file instead (``RELAY_<NAME>_FILE``, see
        ``SECRET_SETTINGS``).

        Raises:
            ConfigError: a variable is set to something unusable.
        """
        env = _with_secret_files(
            {
                key[len(PREFIX) :]: value
                for key, value in (os.environ if environ is None else environ).items()
                if key.startswith(PREFIX)
            }
        )

        def secret(name: str) -> Secret | None:
            value = env.get(name, "").strip()
            return Secret(value) if value else None

        log_format = env.get("LOG_FORMAT", "json").strip().lower()
        if log_format not in ("json", "console"):
            raise ConfigError(f"{PREFIX}LOG_FORMAT must be json or console, got {log_format!r}")
        allowed = {
            key[: -len("_ALLOWED_IPS")].lower(): _networks(key, value)
            for key, value in env.items()
            if key.endswith("_ALLOWED_IPS") and value.strip()
        }
        keys = tuple(Secret(k.strip()) for k in env.get("SECRET_KEY", "").split(",") if k.strip())
        retention_days = _int("RETENTION_DAYS", env.get("RETENTION_DAYS", "30"))
        return cls(
            database_url=env.get("DATABASE_URL", cls.database_url),
            public_url=env.get("PUBLIC_URL", cls.public_url).rstrip("/"),
            port=_int("PORT", env.get("PORT", "8000")),
            secret_keys=keys,
            admin_token=secret("ADMIN_TOKEN"),
            max_body_bytes=_int(
                "MAX_BODY_BYTES", env.get("MAX_BODY_BYTES", str(cls.max_body_bytes))
            ),
            header_timeout=_positive_seconds("HEADER_TIMEOUT", env.get("HEADER_TIMEOUT", "5"), 300),
            body_timeout=_positive_seconds("BODY_TIMEOUT", env.get("BODY_TIMEOUT", "10"), 300),
            max_connections=(
                _int("MAX_CONNECTIONS", env["MAX_CONNECTIONS"])
                if env.get("MAX_CONNECTIONS", "").strip()
                else None
            ),
            body_memory=_int("BODY_MEMORY", env.get("BODY_MEMORY", str(cls.body_memory))),
            log_format=log_format,
            log_level=env.get("LOG_LEVEL", "info").strip().lower(),
            trusted_proxies=_networks("TRUSTED_PROXIES", env.get("TRUSTED_PROXIES", "")),
            allowed_ips=allowed,
            apiframe_api_key=secret("APIFRAME_API_KEY"),
            apiframe_signature=_signature_mode(
                env.get("APIFRAME_SIGNATURE", ""), secret("APIFRAME_API_KEY")
            ),
            apiframe_webhook_secret=secret("APIFRAME_WEBHOOK_SECRET"),
            retry_delays=_seconds("RETRY_DELAYS", env.get("RETRY_DELAYS", "1,2,4")),
            delivery_timeout=_delivery_timeout(env.get("DELIVERY_TIMEOUT", "10")),
            delivery_concurrency=_int(
                "DELIVERY_CONCURRENCY", env.get("DELIVERY_CONCURRENCY", "512")
            ),
            allow_private_targets=_bool(
                "ALLOW_PRIVATE_TARGETS", env.get("ALLOW_PRIVATE_TARGETS", "")
            ),
            target_allowlist=_networks("TARGET_ALLOWLIST", env.get("TARGET_ALLOWLIST", "")),
            retention_days=retention_days,
            failed_retention_days=_failed_retention_days(
                env.get("FAILED_RETENTION_DAYS", ""), retention_days
            ),
            migrate_on_start=_bool("MIGRATE_ON_START", env.get("MIGRATE_ON_START", "true")),
            run_worker=_bool("RUN_WORKER", env.get("RUN_WORKER", "true")),
            metrics_public=_bool("METRICS_PUBLIC", env.get("METRICS_PUBLIC", "")),
            archive=_archive_settings(env, retention_days),
            admin_listen=_listen_address("ADMIN_LISTEN", env.get("ADMIN_LISTEN", "")),
            **_provider_api_settings(env, secret),
        )

    @property
    def evolink_confirmation(self) -> bool:
        """Whether terminal Evolink callbacks are confirmed with the API before being emitted."""
        return self.evolink_confirm and self.evolink_api_key is not None

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (used to fill in generated secrets)."""
        return replace(self, **changes)


def _provider_api_settings(
    env: Mapping[str, str], secret: Callable[[str], Secret | None]
) -> dict[str, Any]:
    """The settings of the providers' status APIs, watches and Rivya webhooks."""
    defaults = Settings()

    def url(name: str) -> str:
        return _base_url(name, env.get(name, getattr(defaults, name.lower())))

    return {
        "evolink_base_url": url("EVOLINK_BASE_URL"),
        "evolink_api_key": secret("EVOLINK_API_KEY"),
        "evolink_confirm": _bool("EVOLINK_CONFIRM", env.get("EVOLINK_CONFIRM", "true")),
        "apiframe_base_url": url("APIFRAME_BASE_URL"),
        "rivya_base_url": url("RIVYA_BASE_URL"),
        "rivya_api_key": secret("RIVYA_API_KEY"),
        "rivya_webhook_secret": _webhook_secret(
            "RIVYA_WEBHOOK_SECRET", env.get("RIVYA_WEBHOOK_SECRET", "")
        ),
        "reve_art_base_url": url("REVE_ART_BASE_URL"),
        "reve_art_api_key": secret("REVE_ART_API_KEY"),
        "watch_backoff": _backoff(env.get("WATCH_BACKOFF", "2,60")),
        "watch_deadline": _positive_seconds(
            "WATCH_DEADLINE", env.get("WATCH_DEADLINE", "86400"), 30 * 86_400
        ),
        "provider_timeout": _positive_seconds(
            "PROVIDER_TIMEOUT", env.get("PROVIDER_TIMEOUT", "10"), 300
        ),
        "holds_per_url": _int("HOLDS_PER_URL", env.get("HOLDS_PER_URL", "100")),
        "holds_max": _int("HOLDS_MAX", env.get("HOLDS_MAX", "1000")),
        "hold_deadline": _positive_seconds(
            "HOLD_DEADLINE", env.get("HOLD_DEADLINE", "3600"), 30 * 86_400
        ),
        "api_rates": {
            provider: _int(name, env.get(name, str(rate)))
            for provider, rate in DEFAULT_API_RATES.items()
            for name in [f"{provider.upper().replace('-', '_')}_API_RATE"]
        },
        "api_rate_window": _positive_seconds(
            "API_RATE_WINDOW", env.get("API_RATE_WINDOW", "60"), 3600
        ),
    }
