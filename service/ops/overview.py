"""The console's front page: the overview (``service.overview``) with this process's tally of
duplicates and refusals, and the polled providers' request budgets."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service import overview
from service.metrics import RECENT_CALLBACKS, recent_callbacks
from service.ops import session as sessions
from service.ops.rendering import relay_of, render
from service.provider_api import polling_configured
from service.store.budget import ApiBudget


async def overview_page(request: Request, session: sessions.Session) -> Response:
    relay = relay_of(request)
    settings = relay.settings
    polled = {
        provider: rate
        for provider, rate in settings.api_rates.items()
        if polling_configured(settings, provider)
    }
    summary = await overview.build(
        relay.store,
        relay.clock,
        recent_callbacks(),
        budget=ApiBudget(polled, settings.api_rate_window),
    )
    return render(
        request,
        "overview.html",
        {"o": summary, "tally_since": RECENT_CALLBACKS.started_at},
        session=session,
    )
