"""Load a ``DatasetMeta`` into a Hugging Face dataset: local files, in-memory data, or a hub id."""

from __future__ import annotations

import inspect
import os
import types
from pathlib import Path
from typing import Any

import datasets as hf

from twinkle.dataset.meta import DatasetMeta
from twinkle.errors import DataError, DataFileNotFoundError
from twinkle.hub import download_dataset

_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
    ".lance": "lance",
}


def _looks_like_path(value: str) -> bool:
    if value.startswith(("ms://", "hf://")):
        return False
    return value.startswith(("/", "./", "../", "~")) or Path(value).suffix.lower() in _BUILDERS


def _pick_split(data: Any, split: str, what: str) -> Any:
    if isinstance(data, (hf.DatasetDict, hf.IterableDatasetDict)):
        if split in data:
            return data[split]
        if "train" in data:
            return data["train"]
        raise DataError(f"{what} has no split {split!r} (it has {list(data)}); set DatasetMeta(split=...)")
    return data


def _from_memory(data: Any, streaming: bool) -> Any:
    if isinstance(data, (hf.Dataset, hf.IterableDataset, hf.DatasetDict, hf.IterableDatasetDict)):
        return data
    if isinstance(data, types.GeneratorType) or (not isinstance(data, (list, dict)) and hasattr(data, "__next__")):
        data = list(data)  # a generator object cannot be re-run or fingerprinted; materialise it once
    elif inspect.isgeneratorfunction(data):
        return (hf.IterableDataset if streaming else hf.Dataset).from_generator(data)
    if isinstance(data, list):
        return hf.Dataset.from_list(data)
    if isinstance(data, dict):
        return hf.Dataset.from_dict(data)
    raise DataError(
        f"DatasetMeta(data=...) takes a list of rows, a dict of columns, a generator or a Hugging Face dataset, "
        f"got {type(data).__name__}"
    )


def _load_local(path: Path, meta: DatasetMeta, streaming: bool, **load_kw: Any) -> Any:
    if path.is_dir():
        return hf.load_dataset(str(path), streaming=streaming, **load_kw)
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"cannot tell the format of {str(path)!r} from its extension; use one of {', '.join(sorted(_BUILDERS))}"
        )
    if builder == "csv":
        load_kw.setdefault("na_filter", False)  # keep empty cells as '' instead of NaN
    return hf.load_dataset(builder, data_files=str(path), streaming=streaming, **load_kw)


def load_meta(meta: DatasetMeta, streaming: bool = False, **load_kw: Any) -> Any:
    """The Hugging Face dataset (``IterableDataset`` when streaming) that ``meta`` describes, sliced."""
    if meta.data is not None:
        data = _from_memory(meta.data, streaming)
        what = "in-memory data"
    else:
        text = os.path.expanduser(meta.dataset_id)
        path = Path(text)
        if path.exists():
            data = _load_local(path, meta, streaming, **load_kw)
        elif _looks_like_path(meta.dataset_id):
            raise DataFileNotFoundError(
                f"dataset file {meta.dataset_id!r} does not exist; check the path (relative paths start from "
                f"{os.getcwd()}), or use an ms:// or hf:// id for a hub dataset"
            )
        else:
            data = download_dataset(meta.dataset_id, meta.subset_name, meta.split, streaming=streaming, **load_kw)
        what = f"dataset {meta.dataset_id!r}"
    data = _pick_split(data, meta.split, what)
    if streaming and isinstance(data, hf.Dataset):
        data = data.to_iterable_dataset()
    if not streaming and isinstance(data, hf.IterableDataset):
        raise DataError(f"{what} is a stream; use twinkle.dataset.IterableDataset for it")
    if meta.data_slice is not None:
        if streaming:
            data = _slice_stream(data, meta)
        else:
            indices = meta.slice_indices(len(data))
            data = data.select(indices)
    return data


def _slice_stream(data: Any, meta: DatasetMeta) -> Any:
    wanted = list(meta.data_slice)
    if wanted != list(range(len(wanted))):
        raise DataError("a streaming dataset can only take data_slice=range(n) (the first n rows)")
    return data.take(len(wanted))
