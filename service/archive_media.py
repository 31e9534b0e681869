"""What an archived output is called: its content type (from the answer, or sniffed) and its
object key.

Keys are deterministic, ``<provider>/<yyyy>/<mm>/<dd>/<task>/<n>.<ext>`` (the day the event was
received, UTC; ``n`` the output's place in the event), so running a job again overwrites the
same objects and never duplicates them, and retention can drop whole days.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

#: The content types a provider's answer may carry that say nothing (sniffed instead).
UNINFORMATIVE = frozenset({"", "application/octet-stream", "binary/octet-stream"})

#: Magic numbers of the media AI-generation APIs return: (offset, bytes, content type).
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),
    (8, b"AVIF", "image/avif"),
    (4, b"ftypqt", "video/quicktime"),
    (4, b"ftyp", "video/mp4"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"\xff\xfb", "audio/mpeg"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (8, b"WAVE", "audio/wav"),
)

#: File extensions by content type; anything else is ``bin``.
_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/avif": "avif",
    "image/svg+xml": "svg",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "video/webm": "webm",
    "audio/mpeg": "mp3",
    "audio/ogg": "ogg",
    "audio/flac": "flac",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/mp4": "m4a",
    "text/plain": "txt",
    "application/json": "json",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


#: A media type as RFC 6838 spells one (and short): anything else in the header is ignored.
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$")

#: Types a browser only displays: an object store serves these as they are. Anything else (SVG,
#: HTML, XML, scripts) could run script on the bucket's or the CDN's origin if opened there, so
#: it is stored as a download (``stored_attributes``).
_PASSIVE = re.compile(
    r"^(image/(png|jpeg|gif|webp|avif)|video/[a-z0-9.+-]+|audio/[a-z0-9.+-]+"
    r"|text/plain|application/json|application/octet-stream)$"
)


def content_type(header: str | None, head: bytes) -> str:
    """The output's content type: the answer's ``Content-Type`` (its media type, lowercased)
    unless it says nothing or is not a media type, else sniffed from the first bytes ``head``."""
    declared = (header or "").split(";", 1)[0].strip().lower()
    if declared not in UNINFORMATIVE and _MEDIA_TYPE.match(declared):
        return declared
    for offset, magic, sniffed in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return sniffed
    return "application/octet-stream"


def stored_attributes(media: str) -> dict[str, str]:
    """The object's HTTP attributes in an object store: its type as it is when passive,
    else served as a download that no browser renders."""
    if _PASSIVE.match(media):
        return {"Content-Type": media}
    return {"Content-Type": "application/octet-stream", "Content-Disposition": "attachment"}


def extension(media: str) -> str:
    return _EXTENSIONS.get(media, "bin")


def task_segment(task_id: str) -> str:
    """``task_id`` as one safe key segment: kept when it is plain, otherwise its safe
    characters plus a hash of the whole (so two ids never share a segment)."""
    if task_id and len(task_id) <= 128 and not _UNSAFE.search(task_id):
        return task_id
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:16]
    return f"{_UNSAFE.sub('_', task_id)[:96]}-{digest}"


def object_key(provider: str, received_at: float, task_id: str, index: int, ext: str) -> str:
    day = dt.datetime.fromtimestamp(received_at, dt.UTC)
    return f"{provider}/{day:%Y/%m/%d}/{task_segment(task_id)}/{index}.{ext}"
