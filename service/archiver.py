"""Copy one output from the provider's URL into the archive, streaming.

The bytes go from the provider's answer straight into the object store (``ArchiveStore.put``,
multipart for large files): at most a few parts are in memory, never the file. On the way the
size is counted against ``RELAY_ARCHIVE_MAX_BYTES`` and the sha256 computed. The request goes
through the same address-guarded aiohttp session as deliveries (``service.guarded_session``):
no private address unless configured, the checked address pinned, every redirect checked.
Compression is refused (``Accept-Encoding: identity``), so what is counted is what is stored
and a small compressed answer cannot expand into a large file.

A failure is an ``ArchiveFailure`` with a reason: ``not_found`` (404/410: the file may not be
there yet, or expired), ``http_error``, ``too_large`` and ``blocked`` (an address not allowed,
or a URL no client can fetch; permanent: another try cannot change them), ``timeout``,
``connection`` (refused, reset, cut mid-file), ``store`` (the object store refused the write).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from service.archive_media import content_type, extension, object_key
from service.archive_store import ArchiveStore
from service.delivery import failure_text
from service.guarded_session import guarded_session
from service.settings import ArchiveSettings
from service.targets import TargetBlocked, TargetPolicy

#: Bytes read from the provider at a time.
READ_BYTES = 1024 * 1024
#: Seconds to connect, and the longest silence while reading, before an output times out.
CONNECT_SECONDS = 10.0
STALL_SECONDS = 30.0
USER_AGENT = "callback-relay-archiver"

#: Reasons another attempt cannot change.
PERMANENT = frozenset({"too_large", "blocked"})


@dataclass(frozen=True)
class Archived:
    """One output in the archive."""

    key: str
    content_type: str
    bytes: int
    sha256: str


class ArchiveFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def permanent(self) -> bool:
        return self.reason in PERMANENT


@dataclass(frozen=True)
class OutputPlace:
    """Where an output's object goes: the parts of its key the archiver does not learn from
    the answer."""

    provider: str
    received_at: float
    task_id: str
    index: int


class Archiver:
    """Streams outputs into ``store`` through one guarded session (opened on first use)."""

    def __init__(
        self, store: ArchiveStore, settings: ArchiveSettings, policy: TargetPolicy
    ) -> None:
        self.store = store
        self.settings = settings
        self.policy = policy
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = guarded_session(self.policy, limit=64, limit_per_host=0)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def archive(self, source_url: str, place: OutputPlace) -> Archived:
        """Copy ``source_url`` into the archive; raises ``ArchiveFailure``."""
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=CONNECT_SECONDS,
            sock_connect=CONNECT_SECONDS,
            sock_read=STALL_SECONDS,
        )
        try:
            async with asyncio.timeout(self.settings.timeout):
                async with self.session.get(
                    source_url,
                    timeout=timeout,
                    headers={"accept-encoding": "identity", "user-agent": USER_AGENT},
                    max_redirects=5,
                ) as response:
                    return await self._store_answer(response, place)
        except ArchiveFailure:
            raise
        except TargetBlocked as exc:
            raise ArchiveFailure("blocked", f"address not allowed: {exc}") from None
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError):
            # Not said how: the error's text is the whole URL, whose query may be a signature.
            raise ArchiveFailure(
                "blocked", "not an http(s) URL that can be fetched (the output's or a redirect's)"
            ) from None
        except TimeoutError:
            raise ArchiveFailure(
                "timeout",
                f"the download took longer than {self.settings.timeout:g} s"
                f" or stalled for {STALL_SECONDS:g} s",
            ) from None
        except aiohttp.TooManyRedirects:
            raise ArchiveFailure("http_error", "too many redirects") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ArchiveFailure("connection", failure_text(exc, STALL_SECONDS)) from None

    async def _store_answer(self, response: aiohttp.ClientResponse, place: OutputPlace) -> Archived:
        if response.status in (404, 410):
            raise ArchiveFailure("not_found", f"HTTP {response.status}: the file is not there")
        if not 200 <= response.status < 300:
            raise ArchiveFailure("http_error", f"HTTP {response.status}")
        limit = self.settings.max_bytes
        if response.content_length is not None and response.content_length > limit:
            raise ArchiveFailure(
                "too_large", f"{response.content_length} bytes, over the {limit}-byte limit"
            )
        chunks = response.content.iter_chunked(READ_BYTES)
        head = b""
        async for head in chunks:
            if head:
                break
        media = content_type(response.headers.get("content-type"), head)
        key = object_key(
            place.provider, place.received_at, place.task_id, place.index, extension(media)
        )
        digest = hashlib.sha256()
        size = 0
        failure: list[ArchiveFailure] = []
        #: The digest's update with the chunk before, running in a thread.
        hashing: asyncio.Future[None] | None = None

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size, hashing
            chunk = head
            while chunk:
                size += len(chunk)
                if size > limit:
                    failure.append(ArchiveFailure("too_large", f"over the {limit}-byte limit"))
                    raise failure[-1]
                # SHA-256 runs at about 700 MB/s here: on the event loop it made a download
                # take nearly twice the plain copy. In a thread (hashlib lets go of the GIL)
                # it overlaps the next read and the store's write; one at a time, in order.
                if hashing is not None:
                    await hashing
                hashing = asyncio.ensure_future(asyncio.to_thread(digest.update, chunk))
                yield chunk
                try:
                    chunk = await anext(chunks, b"")
                except (aiohttp.ClientError, OSError) as exc:
                    failure.append(
                        ArchiveFailure(
                            "connection",
                            f"the download broke off after {size} bytes:"
                            f" {failure_text(exc, STALL_SECONDS)}",
                        )
                    )
                    raise failure[-1] from None

        try:
            await self.store.put(key, counted(), media)
        except TimeoutError:
            raise
        except Exception as exc:
            # What the stream raised comes back from obstore wrapped in its own error type.
            if failure:
                raise failure[-1] from None
            first_line = str(exc).strip().split("\n", 1)[0][:300]
            raise ArchiveFailure("store", f"the archive refused the write: {first_line}") from None
        if hashing is not None:
            await hashing
        if size == 0:
            raise ArchiveFailure("http_error", "the answer had no body")
        return Archived(key=key, content_type=media, bytes=size, sha256=digest.hexdigest())
