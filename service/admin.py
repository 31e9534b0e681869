"""The admin API: every operation under one mount, ``/v1``, behind one authentication step
(a bearer token, ``RELAY_ADMIN_TOKEN`` or a scoped API key: ``service.http.auth.AdminAuth``);
each operation then checks the key's scope against the one it declares (``service.api_keys``).

The operations are declared beside their handlers (``service.operations``), one module per
resource; ``OPERATIONS`` is their table, in routing order, which ``service.openapi`` documents.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.routing import Mount, Router

from service import (
    admin_archive,
    admin_callback_urls,
    admin_deliveries,
    admin_events,
    admin_keys,
    admin_subscribers,
    admin_watches,
)
from service.http.auth import AdminAuth
from service.operations import Operation

PREFIX = "/v1"

OPERATIONS: list[Operation] = [
    *admin_callback_urls.operations,
    *admin_events.operations,
    *admin_subscribers.operations,
    *admin_deliveries.operations,
    *admin_watches.operations,
    *admin_archive.operations,
    *admin_keys.operations,
]


def mount() -> Mount:
    """The admin API as one Starlette mount."""
    # A stray trailing slash is a 404 like any unknown path, not a 307 to a URL built from
    # the request's Host header (the app's own router is set the same way).
    router = Router([operation.route() for operation in OPERATIONS], redirect_slashes=False)
    return Mount(PREFIX, app=router, middleware=[Middleware(AdminAuth)])
