"""Where ``relay serve`` listens: one address for everything, or a public and an admin one.

With ``RELAY_ADMIN_LISTEN`` (``--admin-host/--admin-port``), the public listener serves only
what providers and subscribers need (``PUBLIC_PATHS``: callbacks, archived outputs, health);
anything else there is the same 404 JSON error as an unknown path, so the public port does not
even reveal that an admin surface exists. The admin listener serves everything, as the single
listener does without the option.

Both listeners are sockets of one uvicorn server in one process: one app, one lifespan (one
Relay, one store, one delivery worker), one set of connection protections
(``service.http_protocol``: bounded heads, slow-client timeouts, one connection limit over
both). The app tells them apart by the port the connection arrived on, which ASGI gives as the
scope's ``server``: every connection accepted by a listening socket has that socket's port.
So the two listeners must have different ports, and the same app also works under uvicorn's
multi-process supervisor (``relay serve --workers N``), which hands every worker both sockets.
"""

from __future__ import annotations

import socket

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.error_handlers import http_error_handler
from service.http.paths import route_path
from service.settings import ListenAddress

#: What the public listener serves once the admin surface has a listener of its own: exact
#: paths, and path prefixes.
PUBLIC_PATHS = ("/healthz", "/readyz")
PUBLIC_PREFIXES = ("/callbacks/", "/archive/")


def is_public(path: str) -> bool:
    """Whether the public listener serves ``path`` when the admin surface is apart."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class PublicSurface:
    """ASGI middleware: a request that did not arrive on the admin listener (``admin_port``)
    reaches the app only for a public path; otherwise it is answered 404 ``not_found``, the
    answer of the routing table for a path it does not know."""

    def __init__(self, app: ASGIApp, admin_port: int) -> None:
        self.app = app
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not self._on_admin_listener(scope)
            and not is_public(route_path(scope))
        ):
            response = await http_error_handler(Request(scope), HTTPException(404))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _on_admin_listener(self, scope: Scope) -> bool:
        # No address (a Unix socket, an in-process client) is not the admin listener.
        server = scope.get("server")
        return server is not None and server[1] == self.admin_port


class ListenError(Exception):
    """A listener's address cannot be bound (in use, not an interface of this host...)."""


def bind(address: ListenAddress, role: str | None = None) -> socket.socket:
    """A TCP socket bound to ``address`` (not listening yet: uvicorn does that), for the
    ``role`` ("public listener", "admin listener") an error names, if there are two.

    Bound before anything starts, so an address in use is one clear error, before migrations
    run or worker processes are spawned. Inheritable: worker processes receive it.
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # As uvicorn does: a restarted relay can bind at once although connections of the last one
    # linger in TIME_WAIT. (A port another process listens on still refuses the bind.)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except (OSError, OverflowError) as exc:  # OverflowError: a port past 65535
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        named = f" ({role})" if role else ""
        raise ListenError(f"cannot listen on {address}{named}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def bind_all(public: ListenAddress, admin: ListenAddress | None) -> list[socket.socket]:
    """The public listener's socket, then the admin listener's (when apart); on an error,
    none is left open."""
    sockets = [bind(public, "public listener" if admin is not None else None)]
    if admin is not None:
        try:
            sockets.append(bind(admin, "admin listener"))
        except ListenError:
            sockets[0].close()
            raise
    return sockets


def bound_address(sock: socket.socket, host: str) -> ListenAddress:
    """The address ``sock`` is bound to, named by ``host`` as configured (``0.0.0.0`` stays
    itself) with the port bound (the one the system chose when 0 was asked)."""
    return ListenAddress(host, sock.getsockname()[1])


def http_url(address: ListenAddress) -> str:
    return f"http://{address}"


def default_public_url(public: ListenAddress) -> str:
    """The public URL of a relay that was given none: its public listener, reached on
    127.0.0.1 when it listens on every interface."""
    host = "127.0.0.1" if public.host in ("0.0.0.0", "::", "") else public.host  # noqa: S104
    return http_url(ListenAddress(host, public.port))
