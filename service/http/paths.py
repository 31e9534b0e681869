"""The request's path as the routes see it."""

from __future__ import annotations

from starlette.types import Scope


def route_path(scope: Scope) -> str:
    """The request's path below where the app is mounted, as Starlette's routes match it:
    ASGI's ``path`` includes the ``root_path`` (the mount point a proxy or a parent app routes
    by), which they do not."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return path[len(root_path) :]
    return path
