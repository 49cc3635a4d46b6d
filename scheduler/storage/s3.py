"""S3-compatible storage (AWS, MinIO, Ceph, R2) through boto3."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from scheduler.storage.base import CHUNK, ObjectInfo, ObjectNotFound, Storage, StorageError, check_key


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        client: Any = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
        )

    def _missing(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in ("404", "NoSuchKey", "NotFound")

    def put_file(self, key: str, fileobj: BinaryIO) -> int:
        counted = _Counting(fileobj)
        # Multipart upload above 8 MB in chunks, so a checkpoint never has to fit in memory.
        self.client.upload_fileobj(counted, self.bucket, check_key(key))
        return counted.size

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=check_key(key))["Body"]
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise StorageError(str(exc)) from exc
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=check_key(key))["ContentLength"])
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise StorageError(str(exc)) from exc

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=check_key(key))

    def list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(ObjectInfo(o["Key"], int(o["Size"])) for o in page.get("Contents", []))
        return sorted(out, key=lambda o: o.key)

    def presigned_url(self, key: str, *, expires_s: int, base_url: str) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": check_key(key)}, ExpiresIn=expires_s
        )

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


class _Counting:
    """Counts what boto3 reads, and keeps boto3 from closing the caller's file."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.size += len(data)
        return data

    def close(self) -> None:
        pass
