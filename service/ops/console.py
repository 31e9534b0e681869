"""The ops console at ``/ops``: server-rendered pages for the people on call.

Sign in with the admin token or an API key of scope operate or admin; then the overview,
failed deliveries (with their attempts, a Replay button per row and "Replay all shown"),
events (with their archived outputs), watches waiting for a decision, subscribers (enable,
disable, filters, secret rotation: scope admin only) and failed archive jobs (a Retry button
per job). Plain HTML forms, no JavaScript: every change is a POST carrying the session's CSRF
token, answered with a redirect back and a one-time notice (or, for a new secret, a page
shown once and never cached).

This module is the console's map: every URL and its handler. The pages live by subject beside
it; ``guards`` decides who may see or post, ``rendering`` how the console answers.
"""

from __future__ import annotations

from starlette.routing import Route

from service.ops import archive, deliveries, events, sign_in, subscribers, watches
from service.ops.guards import action, page
from service.ops.overview import overview_page

routes = [
    Route("/ops", page(overview_page), methods=["GET"]),
    Route("/ops/sign-in", sign_in.sign_in_page, methods=["GET"]),
    Route("/ops/sign-in", sign_in.sign_in, methods=["POST"]),
    Route("/ops/sign-out", action(sign_in.sign_out), methods=["POST"]),
    Route("/ops/deliveries", page(deliveries.deliveries_page), methods=["GET"]),
    Route("/ops/deliveries/replay", action(deliveries.replay_shown), methods=["POST"]),
    Route("/ops/deliveries/{delivery_id}", page(deliveries.delivery_page), methods=["GET"]),
    Route("/ops/deliveries/{delivery_id}/replay", action(deliveries.replay_one), methods=["POST"]),
    Route("/ops/events", page(events.events_page), methods=["GET"]),
    Route("/ops/events/{event_id}", page(events.event_page), methods=["GET"]),
    Route("/ops/watches", page(watches.watches_page), methods=["GET"]),
    Route("/ops/archive", page(archive.archive_page), methods=["GET"]),
    Route("/ops/archive/{event_id}/retry", action(archive.retry), methods=["POST"]),
    Route("/ops/watches/{watch_id}/release", action(watches.release), methods=["POST"]),
    Route("/ops/watches/{watch_id}/dismiss", action(watches.dismiss), methods=["POST"]),
    # Subscriber management is the administrator's (service.api_keys).
    Route("/ops/subscribers", page(subscribers.subscribers_page, "admin"), methods=["GET"]),
    Route("/ops/subscribers", action(subscribers.create, "admin"), methods=["POST"]),
    Route(
        "/ops/subscribers/{subscriber_id}", action(subscribers.update, "admin"), methods=["POST"]
    ),
    Route(
        "/ops/subscribers/{subscriber_id}/rotate-secret",
        action(subscribers.rotate_secret, "admin"),
        methods=["POST"],
    ),
]
