"""A real S3-compatible server on loopback for the archive's tests: moto in server mode.

``S3Server`` runs moto's ``ThreadedMotoServer`` (werkzeug, in a thread of the test process) on a
free port of 127.0.0.1; tests read what was written with boto3 (``get_object``, ``list_keys``,
``head``) and give a relay subprocess ``env(bucket, prefix)``.

The environment obstore 0.12 reads for an ``s3://`` store (``S3Store``, ``from_url``), checked
against its ``S3Config``/``ClientConfig`` stubs and by ``tests/test_s3_server.py``, which runs
a subprocess with only these variables:

    AWS_ENDPOINT_URL       the endpoint (``AWS_ENDPOINT`` is read too; ``AWS_ENDPOINT_URL_S3``,
                           if set, takes precedence over both)
    AWS_ALLOW_HTTP=true    plain http (the client option ``allow_http``, which the stubs list
                           without its variable); without it, an http endpoint is refused
                           ("BadScheme"), as the tests check
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (``AWS_DEFAULT_REGION`` is read too)

Requests are path-style (object_store's default), which a bare IP endpoint needs.

What moto does not check: signatures. Its server accepts any request (authentication is off
unless ``INITIAL_NO_AUTH_ACTION_COUNT`` is set), and its checker reads only the Authorization
header, never a presigned URL's query-string signature or its expiry: a test that needs a
presigned URL to be valid checks the signature itself (``tests/test_s3_server.py``).

moto keeps its state in process-wide backends: every ``S3Server`` of a test process sees the
same buckets, so tests use buckets or prefixes of their own.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from obstore.store import S3Store

ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"


class S3Server:
    """moto's S3 on loopback; ``with S3Server() as s3:`` or the ``s3_server`` fixture."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._moto = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
        self._client: Any = None
        self.endpoint = ""

    def start(self) -> S3Server:
        # werkzeug logs every request it serves at INFO; its warnings and errors still show.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._moto.stop()
        # ThreadedMotoServer stops serving but leaves its listening socket open (a
        # ResourceWarning, an error in this suite, once it is collected).
        server = getattr(self._moto, "_server", None)
        if server is not None:
            server.server_close()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the environment and stores that use it

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """What a relay subprocess needs to archive into ``bucket`` under ``prefix``."""
        url = f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
        return {
            "RELAY_ARCHIVE_URL": url,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
        }

    def store(self, bucket: str, prefix: str = "") -> S3Store:
        """An obstore store on ``bucket`` under ``prefix``, configured explicitly (the
        environment of the test process plays no part)."""
        from obstore.store import S3Store

        return S3Store(
            bucket,
            prefix=prefix or None,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
            region=REGION,
            client_options={"allow_http": True},
        )

    # -- reading what was written

    def create_bucket(self, name: str) -> str:
        self._client.create_bucket(Bucket=name)
        return name

    def get_object(self, bucket: str, key: str) -> bytes:
        body = self._client.get_object(Bucket=bucket, Key=key)["Body"]
        with body:
            data: bytes = body.read()
        return data

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys under ``prefix``, sorted."""
        keys: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        """``content_type``, ``content_disposition``, ``size``, ``etag`` (quotes removed) and
        user ``metadata``."""
        answer = self._client.head_object(Bucket=bucket, Key=key)
        return {
            "content_type": answer.get("ContentType"),
            "content_disposition": answer.get("ContentDisposition"),
            "size": answer["ContentLength"],
            "etag": answer["ETag"].strip('"'),
            "metadata": answer.get("Metadata", {}),
        }
