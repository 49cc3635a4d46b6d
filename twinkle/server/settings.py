"""The server's one settings object (environment ``TWINKLE_*``, http.md §1.4), read once per process."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServerSettings"]


class ServerSettings(BaseSettings):
    """
    Attributes:
        default_save_dir: the local checkpoint folder (``TWINKLE_DEFAULT_SAVE_DIR``), unless ``s3_bucket`` is set.
        s3_*: checkpoint storage on S3 (or MinIO) through the platform's ``S3Storage``.
        token_salt: salts the HMAC that turns a token into a tenant id; set it in production.
        long_poll_timeout: how long ``retrieve_future`` waits (keep it under the Tinker SDK's 45 s read timeout).
        poll_interval: unused by this server (it waits on a condition), kept for the documented env name.
        per_user_processor_limit: server-side data objects (datasets, dataloaders, ...) one token may hold.
        processor_timeout: seconds unused after which a server-side data object is dropped.
    """

    model_config = SettingsConfigDict(env_prefix="TWINKLE_", extra="ignore", case_sensitive=False)

    default_save_dir: str = "./outputs"
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    token_salt: str = "twinkle"
    long_poll_timeout: float = 30.0
    poll_interval: float = 0.5
    cache_dir: str | None = None
    per_user_processor_limit: int = 20
    processor_timeout: float = 1800.0
