"""Resolve ids to local folders.

A path that exists is used as is. ``hf://org/name`` goes through ``huggingface_hub`` (refused when
``TWINKLE_FORBID_HF`` is set); ``ms://org/name`` and a bare ``org/name`` go through ModelScope. Before a download,
the hub's host is probed with a short TCP connect (``TWINKLE_HUB_TIMEOUT`` seconds, default 5), because the hub
clients retry for tens of seconds when there is no network; the error then names the id and what to do.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from twinkle.errors import HubError
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.hub")

_TRUTHY = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class HubId:
    hub: str  # 'modelscope' or 'huggingface'
    repo_id: str
    original: str


def is_local_path(model_or_path: str | os.PathLike) -> bool:
    return Path(os.path.expanduser(str(model_or_path))).exists()


def parse_hub_id(value: str) -> HubId:
    """Split ``ms://a/b``, ``hf://a/b`` or ``a/b`` (ModelScope) into hub and repo id."""
    if value.startswith("hf://"):
        return HubId("huggingface", value[len("hf://") :], value)
    if value.startswith("ms://"):
        return HubId("modelscope", value[len("ms://") :], value)
    return HubId("modelscope", value, value)


def _endpoint(hub: str) -> str:
    if hub == "huggingface":
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    domain = os.environ.get("MODELSCOPE_DOMAIN", "www.modelscope.cn")
    return domain if "://" in domain else f"https://{domain}"


def _offline(hub: str) -> bool:
    names = ["TWINKLE_HUB_OFFLINE"] + (["HF_HUB_OFFLINE"] if hub == "huggingface" else ["MODELSCOPE_OFFLINE"])
    return any(os.environ.get(n, "").lower() in _TRUTHY for n in names)


def _check_reachable(hub_id: HubId, what: str) -> None:
    if hub_id.hub == "huggingface" and os.environ.get("TWINKLE_FORBID_HF", "").lower() in _TRUTHY:
        raise HubError(
            f"{what} {hub_id.original!r} needs Hugging Face, which TWINKLE_FORBID_HF forbids; use an ms:// id "
            f"or a local path, or unset TWINKLE_FORBID_HF"
        )
    name = "Hugging Face" if hub_id.hub == "huggingface" else "ModelScope"
    if _offline(hub_id.hub):
        raise HubError(
            f"cannot fetch {what} {hub_id.original!r}: {name} is set offline (TWINKLE_HUB_OFFLINE / "
            f"{'HF_HUB_OFFLINE' if hub_id.hub == 'huggingface' else 'MODELSCOPE_OFFLINE'}); download it where "
            f"the network allows and pass its local path"
        )
    url = urlparse(_endpoint(hub_id.hub))
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    timeout = float(os.environ.get("TWINKLE_HUB_TIMEOUT", "5"))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise HubError(
            f"cannot reach {name} ({host}:{port}) to fetch {what} {hub_id.original!r}: {exc}. Check the network "
            f"(or proxy), or download it where the network allows and pass its local path"
        ) from exc


def download_model(model_id: str, revision: str | None = None) -> str:
    """Download a model repo and return its local folder."""
    hub_id = parse_hub_id(model_id)
    _check_reachable(hub_id, "model")
    try:
        if hub_id.hub == "huggingface":
            from huggingface_hub import snapshot_download

            return snapshot_download(hub_id.repo_id, revision=revision)
        from modelscope import snapshot_download as ms_snapshot_download

        return ms_snapshot_download(hub_id.repo_id, revision=revision)
    except Exception as exc:  # every hub failure becomes one error type naming the id
        raise HubError(f"could not download model {model_id!r}: {exc}. Check the id and the network") from exc


def resolve_model_path(model_id: str | os.PathLike, revision: str | None = None) -> str:
    """A local folder for ``model_id``: the path itself when it exists, else a hub download."""
    text = str(model_id)
    if is_local_path(text):
        return os.path.expanduser(text)
    if text.startswith(("/", "./", "../", "~")):
        raise HubError(f"model path {text!r} does not exist; check the path (or use an ms:// / hf:// id)")
    return download_model(text, revision=revision)


def download_dataset(dataset_id: str, subset_name: str = "default", split: str = "train", **load_kw):
    """Load a hub dataset (ModelScope: snapshot then ``load_dataset`` on the folder; Hugging Face: ``load_dataset``)."""
    import datasets

    hub_id = parse_hub_id(dataset_id)
    _check_reachable(hub_id, "dataset")
    name = None if subset_name in (None, "", "default") else subset_name
    try:
        if hub_id.hub == "huggingface":
            return datasets.load_dataset(hub_id.repo_id, name, **load_kw)
        from modelscope import snapshot_download as ms_snapshot_download

        folder = ms_snapshot_download(hub_id.repo_id, repo_type="dataset")
        return datasets.load_dataset(folder, name, **load_kw)
    except Exception as exc:
        raise HubError(f"could not load dataset {dataset_id!r}: {exc}. Check the id, subset and the network") from exc
