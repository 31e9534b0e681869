"""``GET /archive/<signed key>``: an archived output, at the URL its event carries.

Served on the public listener, to whoever holds the URL (the subscribers the event went to):
the key is signed by the relay (``ArchiveStore.url_for``), so the archive cannot be walked by
guessing task ids. A local directory's file is served by the relay itself (ranges included,
for video players); an object store's answers with a redirect to a presigned URL valid for a
few minutes, so the bytes never pass through the relay. The URL itself never expires: it
works as long as the object is kept.
"""

from __future__ import annotations

import mimetypes

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from service.errors import NotFound, RelayError
from service.relay import Relay


class ArchivedOutputNotFound(NotFound):
    code = "archived_output_not_found"


class ArchiveUnavailable(RelayError):
    status_code = 503
    code = "archive_unavailable"


async def archived_output(request: Request) -> Response:
    relay: Relay = request.app.state.relay
    archive = relay.archive
    key = archive.key_of(request.path_params["token"]) if archive is not None else None
    if archive is None or key is None:
        raise ArchivedOutputNotFound("No archived output at this URL.")
    if archive.root is None:
        try:
            location = await archive.presigned_url(key)
        except Exception as exc:  # obstore's errors: credentials, the store's answer
            raise ArchiveUnavailable(f"The archive could not sign a URL: {exc}") from None
        return RedirectResponse(
            location,
            status_code=302,
            headers={"cache-control": "no-store"},
        )
    path = archive.local_path(key)
    if path is None or not path.is_file():
        raise ArchivedOutputNotFound("The archived output is no longer kept.")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    # The object under a key is replaced only by the same output archived again. The bytes are
    # the provider's (or whoever forged the callback's), served from the relay's own origin,
    # where the console lives: an SVG or an HTML file must not run script here, so the answer
    # is sandboxed and its type never sniffed. Embedding it (<img>, <video>) is unaffected.
    return FileResponse(
        path,
        media_type=media_type,
        headers={
            "cache-control": "public, max-age=86400",
            "content-security-policy": "default-src 'none'; sandbox",
            "x-content-type-options": "nosniff",
        },
    )
