"""The module-level app for process managers (``uvicorn service.asgi:app``, several workers)."""

from __future__ import annotations

from service.app import create_app
from service.logs import configure_logging
from service.settings import Settings
from service.tuning import tune_for_serving

_settings = Settings.from_env()
configure_logging(_settings.log_format, _settings.log_level)
app = create_app(_settings, run_worker=_settings.run_worker)
tune_for_serving()
