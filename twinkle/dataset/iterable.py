"""``IterableDataset``: the same pipeline over a stream (Hugging Face streaming datasets)."""

from __future__ import annotations

from typing import Any

from twinkle.dataset.base import Dataset
from twinkle.dataset.meta import DatasetMeta
from twinkle.errors import NoLengthError
from twinkle.infra import remote_class


@remote_class(execute="first")
class IterableDataset(Dataset):
    """A streaming ``Dataset``: rows are read, mapped, filtered and encoded as they are iterated.

    Hub datasets are streamed without a full download; local files and in-memory data become streams too. It has
    no length and no random access; ``DataLoader`` batches it in stream order.
    """

    streaming = True

    def __init__(self, dataset_meta: DatasetMeta | None = None, **load_kw: Any) -> None:
        super().__init__(dataset_meta, **load_kw)

    def __len__(self) -> int:
        raise NoLengthError(f"{type(self).__name__} is a stream and has no length; iterate it instead")

    def __getitem__(self, index: int) -> Any:
        raise NoLengthError(f"{type(self).__name__} is a stream; iterate it instead of indexing")
