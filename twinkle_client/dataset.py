"""Server-side datasets (http.md §9.4): ``Dataset``, ``LazyDataset``, ``PackingDataset``, ``IterableDataset``,
``IterablePackingDataset``, mirroring ``twinkle.dataset``.

>>> ds = Dataset(dataset_meta=DatasetMeta(data=rows))      # the rows travel with the call; or an ms:// / hf:// id
>>> ds.set_template("Template", model_id="tiny", max_length=128)   # a model the server serves
>>> ds.map("SelfCognitionProcessor", init_args={"model_name": "twinkle", "model_author": "us"})
>>> ds.encode()
>>> len(ds), ds[0]["input_ids"][:5]

The server refuses paths on its own disk, pass-through keywords (``num_proc``, cache files) and functions
(send a preprocessor by name with ``init_args``).
"""

from __future__ import annotations

from typing import Any

from twinkle_client.processor import RemoteObject

__all__ = ["Dataset", "IterableDataset", "IterablePackingDataset", "LazyDataset", "PackingDataset"]


class Dataset(RemoteObject):
    processor_type = "dataset"

    def __init__(self, dataset_meta: Any = None, **kwargs: Any) -> None:
        super().__init__(dataset_meta=dataset_meta, **kwargs)

    def add_dataset(self, dataset_meta: Any, **kwargs: Any) -> None:
        self._call("add_dataset", dataset_meta=dataset_meta, **kwargs)

    def mix_dataset(self, interleave: bool = True) -> None:
        self._call("mix_dataset", interleave=interleave)

    def set_template(self, template: str = "Template", **kwargs: Any) -> None:
        self._call("set_template", template=template, **kwargs)

    def map(self, func: Any, dataset_meta: Any = None, init_args: dict | None = None, **kwargs: Any) -> None:
        """``func``: a preprocessor name (``'SelfCognitionProcessor'``) built with ``init_args`` on the server, or a
        server-side preprocessor object."""
        self._call("map", func=func, dataset_meta=dataset_meta, init_args=init_args, **kwargs)

    def filter(self, func: Any, dataset_meta: Any = None, **kwargs: Any) -> None:
        self._call("filter", func=func, dataset_meta=dataset_meta, **kwargs)

    def encode(self, add_generation_prompt: bool = False, batch_size: int = 1000, timeout: float = 600,
               **kwargs: Any) -> None:
        self._call("encode", timeout=timeout, add_generation_prompt=add_generation_prompt, batch_size=batch_size,
                   **kwargs)

    def check(self, max_problems: int = 10) -> bool:
        return self._call("check", max_problems=max_problems)

    def __len__(self) -> int:
        return int(self._call("__len__"))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._call("__getitem__", index=index)


class LazyDataset(Dataset):
    pass


class PackingDataset(Dataset):
    def pack_dataset(self) -> None:
        self._call("pack_dataset")


class IterableDataset(Dataset):
    pass


class IterablePackingDataset(IterableDataset):
    pass
