"""An S3-compatible server for ``bench/archive --store s3``: the tests' moto server
(``tests/s3_server.py``) in a process of its own, so that its CPU is its own and it shares no
interpreter with the bench.

Creates ``--bucket``, then writes ``{"endpoint", "env"}`` to ``--ready-file`` (``env``: what a
relay needs to archive into ``s3://<bucket>/<--prefix>``, ``S3Server.env``: ``RELAY_ARCHIVE_URL``
and the ``AWS_*`` variables obstore reads) and serves until SIGTERM or SIGINT. moto keeps the
objects in this process's memory.

    python bench/_s3.py --bucket archive --prefix results --ready-file /tmp/s3.json
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.s3_server import S3Server


def main() -> None:
    parser = argparse.ArgumentParser(description="moto's S3 server for bench/archive")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    with S3Server() as s3:
        s3.create_bucket(args.bucket)
        ready = {"endpoint": s3.endpoint, "env": s3.env(args.bucket, args.prefix)}
        partial = Path(args.ready_file + ".part")
        partial.write_text(json.dumps(ready))
        partial.rename(args.ready_file)  # the bench never reads half a file
        stop.wait()


if __name__ == "__main__":
    main()
