"""Upstream's hub module: ``HubOperation`` sends ``ms://`` and bare ids to ``MSHub``, ``hf://`` ids to ``HFHub``.

Downloads and dataset loading go through the same code as ``twinkle.hub`` (reachability check first, errors that
name the id). Uploads (``push_to_hub``, ``create_model_repo``) call the hub clients' own upload functions; they
need a token and the network. ``TWINKLE_FORBID_HF`` (any value but ``'0'``) makes ``hf://`` ids raise ValueError.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from twinkle.hub import _hub
from twinkle.hub.model_alias import resolve_model_id_alias

__all__ = ["HFHub", "HubOperation", "MSHub"]

_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="twinkle-hub-upload")


class _Hub:
    prefix = ""

    @classmethod
    def try_login(cls, token: str | None = None) -> bool:
        raise NotImplementedError

    @classmethod
    def create_model_repo(cls, repo_id: str, token: str | None = None, private: bool = False) -> str:
        raise NotImplementedError

    @classmethod
    def push_to_hub(cls, repo_id: str, folder_path: str, path_in_repo: str | None = None,
                    commit_message: str | None = None, token: str | None = None, private: bool = True,
                    revision: str | None = None, **kwargs: Any) -> None:
        raise NotImplementedError

    @classmethod
    def download_file(cls, repo_id: str, file_path: str, revision: str | None = None, **kwargs: Any) -> str:
        raise NotImplementedError

    @classmethod
    def _repo(cls, repo_id: str) -> str:
        return repo_id[len(cls.prefix):] if repo_id.startswith(cls.prefix) else repo_id

    @classmethod
    def download_model(cls, model_id_or_path: str, revision: str | None = None, ignore_patterns: list | None = None,
                       token: str | None = None, ignore_model: bool = False, **kwargs: Any) -> str:
        """A local folder: a local path unchanged, an alias resolved, else a snapshot download."""
        model_id_or_path = resolve_model_id_alias(model_id_or_path)
        if _hub.is_local_path(model_id_or_path):
            return os.path.expanduser(model_id_or_path)
        return _hub.download_model(model_id_or_path, revision=revision)

    @classmethod
    def load_dataset(cls, dataset_id: str, subset_name: str = "default", split: str = "train",
                     streaming: bool = False, revision: str | None = None, **kwargs: Any) -> Any:
        data = _hub.download_dataset(dataset_id, subset_name, split, streaming=streaming, revision=revision, **kwargs)
        return data[split] if hasattr(data, "keys") and split in data else data

    @classmethod
    def async_push_to_hub(cls, *args: Any, **kwargs: Any) -> Future:
        """``push_to_hub`` in a background thread; ``HubOperation.wait_for(future)`` waits for it."""
        return _pool.submit(cls.push_to_hub, *args, **kwargs)


class MSHub(_Hub):
    prefix = "ms://"

    @classmethod
    def try_login(cls, token: str | None = None) -> bool:
        token = token or os.environ.get("MODELSCOPE_API_TOKEN")
        if not token:
            return False
        from modelscope.hub.api import HubApi

        HubApi().login(token)
        return True

    @classmethod
    def create_model_repo(cls, repo_id: str, token: str | None = None, private: bool = False) -> str:
        from modelscope.hub.api import HubApi

        cls.try_login(token)
        HubApi().create_repo(cls._repo(repo_id), visibility="private" if private else "public", exist_ok=True)
        return cls._repo(repo_id)

    @classmethod
    def push_to_hub(cls, repo_id: str, folder_path: str, path_in_repo: str | None = None,
                    commit_message: str | None = None, token: str | None = None, private: bool = True,
                    revision: str | None = "master", **kwargs: Any) -> None:
        from modelscope.hub.api import HubApi

        cls.try_login(token)
        HubApi().upload_folder(repo_id=cls._repo(repo_id), folder_path=folder_path, path_in_repo=path_in_repo or "",
                               commit_message=commit_message or "upload by twinkle", revision=revision)

    @classmethod
    def download_file(cls, repo_id: str, file_path: str, revision: str | None = None, **kwargs: Any) -> str:
        from modelscope.hub.file_download import model_file_download

        return model_file_download(cls._repo(repo_id), file_path, revision=revision)


class HFHub(_Hub):
    prefix = "hf://"

    @classmethod
    def try_login(cls, token: str | None = None) -> bool:
        token = token or os.environ.get("HF_TOKEN")
        if not token:
            return False
        from huggingface_hub import login

        login(token=token)
        return True

    @classmethod
    def create_model_repo(cls, repo_id: str, token: str | None = None, private: bool = False) -> str:
        from huggingface_hub import create_repo

        create_repo(cls._repo(repo_id), token=token, private=private, exist_ok=True)
        return cls._repo(repo_id)

    @classmethod
    def push_to_hub(cls, repo_id: str, folder_path: str, path_in_repo: str | None = None,
                    commit_message: str | None = None, token: str | None = None, private: bool = True,
                    revision: str | None = None, **kwargs: Any) -> None:
        from huggingface_hub import upload_folder

        upload_folder(repo_id=cls._repo(repo_id), folder_path=folder_path, path_in_repo=path_in_repo,
                      commit_message=commit_message or "upload by twinkle", token=token, revision=revision)

    @classmethod
    def download_file(cls, repo_id: str, file_path: str, revision: str | None = None, **kwargs: Any) -> str:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(cls._repo(repo_id), file_path, revision=revision)


class HubOperation:
    """Dispatch to ``MSHub`` or ``HFHub`` by the id's prefix (bare ids: ModelScope)."""

    @staticmethod
    def hub_for(repo_id: str) -> type[_Hub]:
        if repo_id.startswith("hf://"):
            if os.environ.get("TWINKLE_FORBID_HF", "0") != "0":
                raise ValueError(f"{repo_id!r} needs Hugging Face, which TWINKLE_FORBID_HF forbids; use an ms:// id "
                                 f"or a local path, or set TWINKLE_FORBID_HF=0")
            return HFHub
        return MSHub

    @staticmethod
    def wait_for(futures: Future | list[Future], timeout: float | None = None) -> list[Any]:
        items = futures if isinstance(futures, list) else [futures]
        return [f.result(timeout=timeout) for f in items]

    @staticmethod
    def _dispatch(name: str, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(HubOperation.hub_for(repo_id), name)(repo_id, *args, **kwargs)

    @classmethod
    def try_login(cls, repo_id: str = "", token: str | None = None) -> bool:
        return HubOperation.hub_for(repo_id).try_login(token)

    @classmethod
    def create_model_repo(cls, repo_id: str, *args: Any, **kwargs: Any) -> str:
        return cls._dispatch("create_model_repo", repo_id, *args, **kwargs)

    @classmethod
    def push_to_hub(cls, repo_id: str, *args: Any, **kwargs: Any) -> None:
        return cls._dispatch("push_to_hub", repo_id, *args, **kwargs)

    @classmethod
    def async_push_to_hub(cls, repo_id: str, *args: Any, **kwargs: Any) -> Future:
        return cls._dispatch("async_push_to_hub", repo_id, *args, **kwargs)

    @classmethod
    def load_dataset(cls, dataset_id: str, *args: Any, **kwargs: Any) -> Any:
        return cls._dispatch("load_dataset", dataset_id, *args, **kwargs)

    @classmethod
    def download_model(cls, model_id_or_path: str, *args: Any, **kwargs: Any) -> str:
        return cls._dispatch("download_model", model_id_or_path, *args, **kwargs)

    @classmethod
    def download_file(cls, repo_id: str, *args: Any, **kwargs: Any) -> str:
        return cls._dispatch("download_file", repo_id, *args, **kwargs)
