"""Model and dataset ids: local paths, ``ms://`` (ModelScope, also the default) and ``hf://`` (Hugging Face)."""

from twinkle.hub._hub import (
    HubId,
    download_dataset,
    download_model,
    is_local_path,
    parse_hub_id,
    resolve_model_path,
)

__all__ = ["HubId", "download_dataset", "download_model", "is_local_path", "parse_hub_id", "resolve_model_path"]
