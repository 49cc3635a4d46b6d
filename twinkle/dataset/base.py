"""``Dataset``: load, preprocess, filter, encode and mix training data (backed by Hugging Face ``datasets``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets as hf
import torch.utils.data

from twinkle.dataset._loading import load_meta
from twinkle.dataset.meta import DatasetMeta
from twinkle.errors import ConfigError, DataError
from twinkle.infra import remote_class, remote_function
from twinkle.preprocessor import DataFilter, Preprocessor, get_preprocessor
from twinkle.template import Template, get_template

FEATURE_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "length")
ROLES = ("system", "user", "assistant", "tool")


def encode_batch(template: Template, columns: dict[str, list], add_generation_prompt: bool) -> dict[str, list]:
    """Encode a batch of rows given as columns; other columns ride along; empty samples are dropped."""
    features, index = template.encode_columns(columns, add_generation_prompt)
    keep = [j for j, n in enumerate(features["length"]) if n > 0]
    out = {k: [v[j] for j in keep] for k, v in features.items()}
    for key, values in columns.items():
        if key not in out:
            out[key] = [values[index[j]] for j in keep]
    return out


def as_function(func: Any, init_args: dict | None) -> Callable[[dict[str, list]], dict[str, list]]:
    if isinstance(func, (str, type, Preprocessor)):
        return get_preprocessor(func, **(init_args or {}))
    if callable(func):
        return func
    raise ConfigError(f"map takes a function, a Preprocessor or a preprocessor name, got {type(func).__name__}")


@remote_class(execute="first")
class Dataset(torch.utils.data.Dataset):
    """A map-style dataset of trajectories, then of encoded samples.

    >>> ds = Dataset(dataset_meta=DatasetMeta('data.jsonl', data_slice=range(100)))
    >>> ds.set_template('Template', model_id='path/to/model', max_length=512)
    >>> ds.map(SelfCognitionProcessor('twinkle LLM', 'ModelScope community'))
    >>> ds.encode()
    >>> ds[0]['input_ids'][:5]

    Args:
        dataset_meta: the first dataset to load; more with ``add_dataset``.
        **load_kw: passed to ``datasets.load_dataset`` (e.g. ``cache_dir``, ``num_proc``).
    """

    streaming = False

    def __init__(self, dataset_meta: DatasetMeta | None = None, **load_kw: Any) -> None:
        self.datasets: dict[str, Any] = {}
        self.dataset: Any = None
        self.template: Template | None = None
        self._mixed = False
        self._load_kw = load_kw
        if dataset_meta is not None:
            self.add_dataset(dataset_meta, **load_kw)

    # ------------------------------------------------------------------ sources

    @remote_function(execute="first")
    def add_dataset(self, dataset_meta: DatasetMeta, **load_kw: Any) -> None:
        """Load another dataset. Before ``mix_dataset``, ``map``/``filter`` can target it by its meta."""
        if not isinstance(dataset_meta, DatasetMeta):
            raise ConfigError(f"add_dataset takes a DatasetMeta, got {type(dataset_meta).__name__}")
        data = load_meta(dataset_meta, streaming=self.streaming, **{**self._load_kw, **load_kw})
        self.datasets[dataset_meta.get_id()] = data
        if self.dataset is None or (len(self.datasets) == 1):
            self.dataset = data
        self._mixed = False

    @remote_function(execute="first")
    def mix_dataset(self, interleave: bool = True) -> None:
        """Combine every added dataset: alternate their rows (stopping when the first runs out), or concatenate."""
        parts = list(self.datasets.values())
        if not parts:
            raise DataError("no dataset to mix; construct with dataset_meta= or call add_dataset first")
        if len(parts) == 1:
            self.dataset = parts[0]
        else:
            try:
                if interleave:
                    self.dataset = hf.interleave_datasets(parts, stopping_strategy="first_exhausted")
                else:
                    self.dataset = hf.concatenate_datasets(parts)
            except ValueError as exc:
                raise DataError(
                    f"cannot mix datasets whose columns differ ({exc}); map them to the same columns first "
                    f"(e.g. with the same Preprocessor)"
                ) from exc
        self._mixed = True

    def _targets(self, dataset_meta: DatasetMeta | None) -> list[str]:
        if self._mixed or not self.datasets:
            if dataset_meta is not None:
                raise DataError(
                    "the datasets are already mixed; apply this before mix_dataset, or without dataset_meta"
                )
            return []
        if dataset_meta is None:
            return list(self.datasets)
        key = dataset_meta.get_id()
        if key not in self.datasets:
            raise DataError(f"no dataset {key!r} was added (added: {list(self.datasets)})")
        return [key]

    def _apply(self, dataset_meta: DatasetMeta | None, op: Callable[[Any], Any]) -> None:
        self._require_data()
        targets = self._targets(dataset_meta)
        if not targets:
            self.dataset = op(self.dataset)
            return
        for key in targets:
            self.datasets[key] = op(self.datasets[key])
        self.dataset = next(iter(self.datasets.values()))

    def _require_data(self) -> None:
        if self.dataset is None:
            raise DataError("this Dataset has no data; construct it with dataset_meta= or call add_dataset")

    # ------------------------------------------------------------------ transforms

    @remote_function(execute="first")
    def set_template(self, template: str | type[Template] | Template, **kwargs: Any) -> None:
        """Choose the template by name (``'Template'``), class or instance; ``kwargs`` build it (``model_id``...)."""
        self.template = get_template(template, **kwargs)

    @remote_function(execute="first")
    def map(
        self,
        func: Callable | Preprocessor | str,
        dataset_meta: DatasetMeta | None = None,
        init_args: dict | None = None,
        **hf_kw: Any,
    ) -> None:
        """Transform rows in batches (``func(columns) -> columns``).

        A ``Preprocessor`` (instance, class or name; ``init_args`` build it) replaces the columns with its output;
        a plain function adds to or overwrites them, as ``datasets.Dataset.map`` does.
        """
        fn = as_function(func, init_args)
        kw = {"batched": True, "load_from_cache_file": False, **hf_kw}
        if self.streaming:
            kw.pop("load_from_cache_file")

        def op(ds: Any) -> Any:
            if isinstance(fn, Preprocessor) and "remove_columns" not in kw:
                return ds.map(fn, remove_columns=list(ds.column_names or []), **kw)
            return ds.map(fn, **kw)

        self._apply(dataset_meta, op)

    @remote_function(execute="first")
    def filter(self, func: Callable | DataFilter, dataset_meta: DatasetMeta | None = None, **hf_kw: Any) -> None:
        """Keep the rows for which ``func(row)`` is true."""
        if not callable(func):
            raise ConfigError(f"filter takes a function or a DataFilter, got {type(func).__name__}")
        kw = {"load_from_cache_file": False, **hf_kw}
        if self.streaming:
            kw.pop("load_from_cache_file")
        self._apply(dataset_meta, lambda ds: ds.filter(func, **kw))

    @remote_function(execute="first")
    def encode(self, add_generation_prompt: bool = False, batch_size: int = 1000, **hf_kw: Any) -> None:
        """Encode every row with the template (batched); samples left empty (truncation 'delete') are dropped.

        Raises:
            DataError: no template set.
            SampleTooLongError: a sample longer than max_length under truncation_strategy='raise'.
        """
        template = self._require_template()
        kw = {"batched": True, "batch_size": batch_size, "load_from_cache_file": False, **hf_kw}
        if self.streaming:
            kw.pop("load_from_cache_file")
        else:
            # hashing the template (a tokenizer) for a cache fingerprint is slow and the cache is off anyway
            kw.setdefault("new_fingerprint", uuid.uuid4().hex)

        one_to_one = template.truncation_strategy not in ("split", "delete")

        def op(ds: Any) -> Any:
            if self._is_nested(ds):
                # preference rows: encode positive/negative separately, one sample each; no row is dropped
                if not one_to_one:
                    raise ConfigError(
                        f"encode() of nested (positive/negative) rows cannot use truncation_strategy="
                        f"{template.truncation_strategy!r}: it breaks the one-to-one pairing; use 'raise', 'left' "
                        f"or 'right'"
                    )
                return ds.map(lambda b: template.batch_encode(dict(b), add_generation_prompt), **kw)
            if one_to_one:
                # one output row per input row: the other columns stay where they are, unrewritten
                encoded = ds.map(lambda b: template.encode_columns(b, add_generation_prompt)[0], **kw)
                if self.streaming:
                    return encoded.filter(lambda row: row["length"] > 0)
                if 0 in set(encoded["length"]):
                    encoded = encoded.filter(lambda row: row["length"] > 0, load_from_cache_file=False)
                return encoded
            columns = list(ds.column_names or [])
            return ds.map(lambda b: encode_batch(template, b, add_generation_prompt), remove_columns=columns, **kw)

        self._apply(None, op)

    @staticmethod
    def _is_nested(ds: Any) -> bool:
        """Rows without ``messages`` whose columns hold trajectories (``positive``/``negative``)."""
        from twinkle.template.base import nested_trajectory_columns

        names = list(ds.column_names or [])
        if "messages" in names:
            return False
        try:
            first = next(iter(ds.take(1))) if hasattr(ds, "take") else ds[0]
        except (StopIteration, IndexError):
            return False
        return bool(nested_trajectory_columns({k: [v] for k, v in first.items()}))

    def _require_template(self) -> Template:
        if self.template is None:
            raise DataError("no template set; call dataset.set_template('Template', model_id=...) before encode")
        return self.template

    # ------------------------------------------------------------------ inspection and output

    @remote_function(execute="first")
    def check(self, max_problems: int = 10) -> bool:
        """Validate every row: well-formed ``messages`` before encoding, non-empty aligned features after.

        Raises:
            DataError: listing up to ``max_problems`` bad rows by index, with what is wrong.
        """
        self._require_data()
        problems: list[str] = []
        for i, row in enumerate(self.dataset):
            problem = self._row_problem(row)
            if problem:
                problems.append(f"row {i}: {problem}")
                if len(problems) >= max_problems:
                    break
        if problems:
            raise DataError("dataset check failed:\n  " + "\n  ".join(problems))
        return True

    @staticmethod
    def _row_problem(row: dict[str, Any]) -> str | None:
        if "input_ids" in row:
            n = len(row["input_ids"])
            if n == 0:
                return "input_ids is empty"
            bad = [k for k in ("labels", "attention_mask", "position_ids") if k in row and len(row[k]) != n]
            return f"{', '.join(bad)} not as long as input_ids ({n})" if bad else None
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            return f"no messages (columns: {sorted(row)}); map it with a Preprocessor"
        for j, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return f"message {j} has role {message.get('role') if isinstance(message, dict) else None!r}"
            if not isinstance(message.get("content"), (str, list)):
                return f"message {j} has no content"
        return None

    @remote_function(execute="first")
    def save_as(self, path: str | Path, format: str | None = None, batch_size: int = 1000, mode: str = "immediate"):
        """Write the dataset to ``path`` as jsonl (``.json`` is written as jsonl too), csv or parquet.

        Args:
            format: ``'jsonl'``, ``'json'``, ``'csv'`` or ``'parquet'``; default from the extension.
            batch_size: rows written per batch.
            mode: ``'immediate'`` writes now (the only mode supported here).
        """
        self._require_data()
        if mode != "immediate":
            raise ConfigError(f"save_as(mode={mode!r}) is not supported; use mode='immediate'")
        path = Path(path)
        fmt = (format or path.suffix.lstrip(".")).lower()
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.streaming:
            raise DataError("save_as needs a map-style dataset; a stream has no end to write up to")
        if fmt in ("jsonl", "json"):
            self.dataset.to_json(str(path), lines=True, batch_size=batch_size)
        elif fmt == "csv":
            self.dataset.to_csv(str(path), index=False, batch_size=batch_size)
        elif fmt == "parquet":
            self.dataset.to_parquet(str(path), batch_size=batch_size)
        else:
            raise ConfigError(f"cannot save as {fmt!r}; use jsonl, json, csv or parquet")
        return str(path)

    @property
    def column_names(self) -> list[str]:
        self._require_data()
        return list(self.dataset.column_names)

    def __len__(self) -> int:
        self._require_data()
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._require_data()
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Several rows in one read (what a DataLoader asks for a batch)."""
        if type(self).__getitem__ is not Dataset.__getitem__:
            return [self[i] for i in indices]  # a subclass builds its rows itself (lazy encoding, packing)
        self._require_data()
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is None:
            return [self.dataset[i] for i in indices]
        return getitems(list(indices))

    def __iter__(self):
        self._require_data()
        return iter(self.dataset)

    def __repr__(self) -> str:
        size = len(self.dataset) if self.dataset is not None and not self.streaming else "?"
        return f"{type(self).__name__}(rows={size}, sources={list(self.datasets)}, template={self.template!r})"
