"""A refused connection, a failed DNS lookup and a rejected certificate, each called what it
is, in the same words by the API, the CLI and the ops console.

A real relay delivers to a closed port, a name under ``.invalid`` (the system's resolver; it
never resolves) and an HTTPS server with a self-signed certificate. The words are recorded
once, with the attempt (``service.delivery.failure_text``); each surface shows that record.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import EVOLINK_COMPLETED, RelayServer, bound_socket
from tests.edge import EdgeLoop, TinyServer, self_signed_tls
from tests.test_ops_console import browser, sign_in


def test_each_failure_has_the_same_words_in_the_api_the_cli_and_the_console(
    relay_factory: Callable[..., RelayServer], tmp_path: Path
) -> None:
    """What the API records, ``relay deliveries list`` and /ops/deliveries show, word for word."""
    relay = relay_factory(retry_delays=())  # one attempt each, then failed
    closed = bound_socket()  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    with closed, EdgeLoop() as edge:
        tls = edge.serve(TinyServer(tls=self_signed_tls(tmp_path)))
        expected = {
            relay.add_subscriber(f"http://127.0.0.1:{port}/hook")["id"]: (
                f"connection refused: 127.0.0.1:{port}"
            ),
            relay.add_subscriber("https://subscriber.invalid/hook")["id"]: (
                "DNS lookup failed: subscriber.invalid: "
            ),
            relay.add_subscriber(tls.url)["id"]: (
                f"TLS certificate rejected: 127.0.0.1:{tls.port}: certificate verify failed:"
                " self-signed certificate"
            ),
        }
        relay.post_callback(relay.mint(reusable=True), EVOLINK_COMPLETED)
        failed = relay.wait_deliveries(3, "failed")

    errors = {}
    for delivery in failed:
        words = expected[delivery["subscriber_id"]]
        assert delivery["last_error"].startswith(words), delivery
        (only,) = relay.delivery(delivery["id"])["attempts"]
        assert (only["status_code"], only["error"]) == (None, delivery["last_error"])
        errors[delivery["id"]] = delivery["last_error"]
    refused = next(d for d in failed if d["last_error"].startswith("connection refused"))
    (attempt,) = relay.delivery(refused["id"])["attempts"]
    assert attempt["latency_ms"] < 1000  # refused at once: no timeout was waited for

    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DATABASE_URL"] = relay.settings.database_url
    listed = subprocess.run(
        [sys.executable, "-m", "service", "deliveries", "list", "--status", "failed", "--wide"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = {line.split()[0]: line for line in listed.splitlines() if line.startswith("dlv_")}
    for delivery_id, error in errors.items():
        assert error in rows[delivery_id], listed  # --wide: each last error whole on its row

    with browser(relay) as client:
        sign_in(client)
        page = client.get("/ops/deliveries").text
    for error in errors.values():
        assert error.replace("'", "&#39;") in page
