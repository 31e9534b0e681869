"""Where archived outputs live: one object store, reached through obstore.

obstore (the Python binding of Rust's ``object_store``) is the one library for every kind
``RELAY_ARCHIVE_URL`` names: a local directory (``file://``), S3 and every S3-compatible
service (``s3://``: AWS, MinIO, Cloudflare R2), Google Cloud Storage (``gs://``) and Azure
(``az://``). It streams an upload from an async iterator (multipart for large objects) and
presigns URLs, so the archiver never holds a whole file and the relay need not proxy bytes
from a bucket. Credentials come from the usual variables of each cloud (``AWS_*``...), or
from the ``RELAY_ARCHIVE_*`` options, which win.

How a subscriber fetches an object (``url_for``): under ``RELAY_ARCHIVE_PUBLIC_URL`` when it
is set (a CDN or a public bucket), else at ``<RELAY_PUBLIC_URL>/archive/<signed key>``, which
the relay serves (``service.archive_route``): the file itself from a local directory, a
redirect to a short-lived presigned URL from an object store. The key is signed so that
nobody can walk the archive by guessing task ids; the URL never expires, so the same event
body works for as long as the object is kept.
"""

from __future__ import annotations

import base64
import datetime as dt
import glob
import secrets
from collections.abc import AsyncIterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import obstore
from itsdangerous import BadSignature, Signer

from service.archive_media import stored_attributes
from service.settings import ArchiveSettings

#: How long a presigned URL the relay redirects to stays valid.
PRESIGNED_SECONDS = 15 * 60
#: Parts of a multipart upload, and how many go up at once: 8 MiB x 2 bounds what an upload
#: buffers (object stores want parts of at least 5 MiB).
PART_BYTES = 8 * 1024 * 1024
PARTS_AT_ONCE = 2
#: Where ``check_writable`` writes its probes (outside every provider's keys).
PROBE_PREFIX = ".relay-probe"


class ArchiveStore:
    """The object store of ``settings.url`` and the URLs its objects are fetched at.

    Args:
        settings: the archive's settings.
        relay_public_url: ``RELAY_PUBLIC_URL``, the base of relay-served archive URLs.
        signing_keys: the relay's secret keys (newest first): they sign the keys in those URLs.
    """

    def __init__(
        self, settings: ArchiveSettings, relay_public_url: str, signing_keys: Sequence[str]
    ) -> None:
        self.settings = settings
        self._relay_public_url = relay_public_url.rstrip("/")
        self._signers = [Signer(key, salt="callback-relay.archive") for key in signing_keys]
        parts = urlsplit(settings.url)
        #: The directory of a ``file://`` archive (served by the relay), else None.
        self.root: Path | None = None
        if parts.scheme == "file":
            self.root = Path(unquote(parts.path)).resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            self._store: Any = obstore.store.LocalStore(self.root)
        else:
            # The options' names are the same for every cloud (``endpoint``, ``region``...);
            # typed per cloud in obstore, so passed as one mapping here.
            options: Any = dict(settings.options) or None
            client: Any = {"allow_http": True} if settings.allow_http else None
            self._store = obstore.store.from_url(
                settings.url, config=options, client_options=client
            )

    # -- writing --------------------------------------------------------------------------------

    async def put(self, key: str, chunks: AsyncIterable[bytes], content_type: str) -> None:
        """Stream ``chunks`` into ``key``, replacing what was there; atomic (a reader sees the
        old object or the whole new one). An exception raised by ``chunks`` aborts it."""
        # A local directory keeps no attributes: the relay serves the type the extension says.
        attributes: Any = None if self.root is not None else stored_attributes(content_type)
        await obstore.put_async(
            self._store,
            key,
            chunks,
            attributes=attributes,
            chunk_size=PART_BYTES,
            max_concurrency=PARTS_AT_ONCE,
        )
        if self.root is not None:
            self._remove_staging_leftovers(key)

    def _remove_staging_leftovers(self, key: str) -> None:
        """A local directory's upload is staged beside its key (``<key>#<n>``) and renamed when
        complete; a run killed mid-upload leaves its staging file behind. The relay's keys
        never contain ``#``, and a job never runs twice at once, so once the key is written,
        any such file beside it is a dead run's and goes."""
        path = self.local_path(key)
        if path is not None:
            for leftover in path.parent.glob(f"{glob.escape(path.name)}#*"):
                leftover.unlink(missing_ok=True)

    async def check_writable(self) -> None:
        """Write and delete a small object; raises what the store raised (``/readyz``)."""
        key = f"{PROBE_PREFIX}/{secrets.token_hex(8)}"  # one per probe: replicas probe at once
        await obstore.put_async(self._store, key, secrets.token_bytes(16))
        await obstore.delete_async(self._store, key)

    async def delete_days_before(self, cutoff: dt.date, limit: int = 10_000) -> int:
        """Delete objects of the days before ``cutoff`` (keys ``<provider>/<yyyy>/<mm>/<dd>/...``),
        at most ``limit``; returns how many went."""
        deleted = 0
        for day_prefix in await self._day_prefixes_before(cutoff):
            stream = obstore.list(self._store, prefix=day_prefix, chunk_size=1000)
            async for chunk in stream:
                paths = [meta["path"] for meta in chunk][: limit - deleted]
                if paths:
                    await obstore.delete_async(self._store, paths)
                    deleted += len(paths)
                if deleted >= limit:
                    return deleted
        return deleted

    async def _day_prefixes_before(self, cutoff: dt.date) -> list[str]:
        async def below(prefix: str | None) -> list[str]:
            listed = await obstore.list_with_delimiter_async(self._store, prefix=prefix)
            return [p.rstrip("/") for p in listed["common_prefixes"]]

        days = []
        for provider in await below(None):
            for year in await below(provider):
                for month in await below(year):
                    for day in await below(month):
                        try:
                            date = dt.date(*(int(part) for part in day.split("/")[-3:]))
                        except ValueError:
                            continue  # not a day the archiver wrote
                        if date < cutoff:
                            days.append(day + "/")
        return days

    # -- reading --------------------------------------------------------------------------------

    def url_for(self, key: str) -> str:
        """The URL subscribers fetch ``key`` at; it never changes."""
        if self.settings.public_url is not None:
            return f"{self.settings.public_url}/{quote(key)}"
        token = base64.urlsafe_b64encode(key.encode()).rstrip(b"=")
        return f"{self._relay_public_url}/archive/{self._signers[0].sign(token).decode()}"

    def key_of(self, signed: str) -> str | None:
        """The key a relay archive URL's last segment names, or None if it is not one the
        relay signed (with any of its keys)."""
        for signer in self._signers:
            try:
                token = signer.unsign(signed)
            except BadSignature:
                continue
            try:
                return base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return None
        return None

    def local_path(self, key: str) -> Path | None:
        """The file of ``key`` in a ``file://`` archive (None for an object store, or a key that
        would leave the archive's directory)."""
        if self.root is None:
            return None
        path = (self.root / key).resolve()
        return path if path.is_relative_to(self.root) else None

    async def presigned_url(self, key: str) -> str:
        """A URL that reads ``key`` straight from the object store for ``PRESIGNED_SECONDS``."""
        url: str = await obstore.sign_async(
            self._store, "GET", key, dt.timedelta(seconds=PRESIGNED_SECONDS)
        )
        return url
