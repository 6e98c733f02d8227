"""A real S3 server on loopback for the tests: moto's, in this process's threads."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from moto.server import ThreadedMotoServer

# Credentials moto accepts; the AWS chain reads them from the environment as from anywhere.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "avcache-test", "AWS_SECRET_ACCESS_KEY": "avcache-test",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


class S3Server:
    """moto's S3 on 127.0.0.1 at a free port; `endpoint` is its URL."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def new_bucket(self) -> str:
        name = f"avcache-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> str:
        """Every file of `folder` under s3://bucket/prefix/; the URL."""
        client = self.client()
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                key = f"{prefix}/{path.relative_to(folder).as_posix()}"
                client.upload_file(str(path), bucket, key)
        return f"s3://{bucket}/{prefix}"

    def put(self, url: str, data: bytes) -> None:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        self.client().put_object(Bucket=bucket, Key=key, Body=data)


@contextlib.contextmanager
def credentials() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
