"""Object storage: one interface (``Storage``), a local folder and S3. ``make_storage`` picks from settings."""

from __future__ import annotations

from scheduler.settings import Settings
from scheduler.storage.base import ObjectInfo, ObjectNotFound, Storage, StorageError, check_key
from scheduler.storage.local import LocalStorage
from scheduler.storage.s3 import S3Storage


def make_storage(settings: Settings) -> Storage:
    """S3 when ``S3_BUCKET`` is set, else the local folder ``STORAGE_DIR``."""
    if settings.s3_bucket:
        return S3Storage(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=(
                settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
            ),
        )
    return LocalStorage(settings.storage_dir, settings.secret_key.get_secret_value())


def job_prefix(user_id: str, job_id: str) -> str:
    return f"users/{user_id}/jobs/{job_id}/"


def bundle_key(user_id: str, job_id: str) -> str:
    return f"{job_prefix(user_id, job_id)}bundle.zip"


def attempt_key(user_id: str, job_id: str, attempt: int, path: str) -> str:
    return f"{job_prefix(user_id, job_id)}attempts/{attempt}/{path}"


__all__ = [
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFound",
    "S3Storage",
    "Storage",
    "StorageError",
    "attempt_key",
    "bundle_key",
    "check_key",
    "job_prefix",
    "make_storage",
]
