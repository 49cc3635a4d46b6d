"""``InputProcessor``: encoded rows in, model-ready tensors out (padding or padding-free packing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from twinkle.errors import ConfigError, DataError
from twinkle.infra import remote_class, remote_function
from twinkle.utils.device_mesh import DeviceMesh

PAD_VALUES: dict[str, int] = {
    "input_ids": 0,
    "labels": -100,
    "position_ids": -1,
    "completion_mask": 0,
    "attention_mask": 0,
}


@remote_class()
class InputProcessor:
    """Collate encoded samples into the batch a model's forward takes.

    Pipeline: convert to tensors, collate (pad, or pack when ``padding_free``), keep only the keys a model
    consumes (``model_keys``). Padding values: input_ids 0, labels -100, position_ids -1, completion_mask 0,
    attention_mask 0.

    Padding-free packing concatenates the samples into one row of shape ``[1, N]``, keeps each sample's own
    ``position_ids`` (restarting at 0, which is how transformers finds the boundaries), drops ``attention_mask`` and
    adds ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32 cumulative lengths starting at 0) and
    ``max_length_q``/``max_length_k``. Sample boundaries are the row starts plus every restart of ``position_ids``
    at 0, so rows that are already packed (``PackingDataset``) keep their samples apart.

    Args:
        device_mesh: the layout of the consuming model (context-parallel splitting is not supported yet).
        padding_free: pack instead of padding.
        framework: ``'transformers'`` (``__call__`` returns a dict) or ``'megatron'`` (a list of micro-batches).
        padding_side: ``'right'`` or ``'left'``.
    """

    model_keys = ("input_ids", "attention_mask", "position_ids", "labels", "completion_mask")

    def __init__(
        self,
        device_mesh: DeviceMesh | None = None,
        padding_free: bool = False,
        framework: str = "transformers",
        padding_side: str = "right",
    ) -> None:
        if framework not in ("transformers", "megatron"):
            raise ConfigError(f"unknown framework {framework!r}; use 'transformers' or 'megatron'")
        if padding_side not in ("right", "left"):
            raise ConfigError(f"unknown padding_side {padding_side!r}; use 'right' or 'left'")
        if device_mesh is not None and (device_mesh.cp_world_size > 1):
            raise ConfigError(
                "context-parallel input splitting (cp_size > 1) is not supported by InputProcessor yet; "
                "use a mesh without cp"
            )
        self.device_mesh = device_mesh
        self.padding_free = padding_free
        self.framework = framework
        self.padding_side = padding_side

    # ------------------------------------------------------------------ public

    @remote_function(dispatch="all", collect="first")
    def __call__(self, inputs: Sequence[Mapping[str, Any]] | Mapping[str, Any], **kwargs: Any):
        """Collate ``inputs`` (a list of encoded rows, or one row) into one batch of tensors.

        Returns a dict for transformers, a one-element list of micro-batches for megatron.
        """
        rows = [inputs] if isinstance(inputs, Mapping) else list(inputs)
        batch = self._collate(rows)
        return [batch] if self.framework == "megatron" else batch

    def collate_fn(self, inputs: Sequence[Mapping[str, Any]], micro_batch_size: int | None = None) -> list[dict]:
        """Split ``inputs`` into micro-batches of ``micro_batch_size`` rows (all of them when None) and collate each."""
        rows = list(inputs)
        if micro_batch_size is None or micro_batch_size >= len(rows):
            return [self._collate(rows)] if rows else []
        if micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        return [self._collate(rows[i : i + micro_batch_size]) for i in range(0, len(rows), micro_batch_size)]

    # ------------------------------------------------------------------ steps

    @staticmethod
    def to_tensor(value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.reshape(-1) if value.dim() != 1 else value
        array = np.asarray(value)
        if array.dtype == object:
            raise DataError(f"cannot turn a ragged or non-numeric value into a tensor: {str(value)[:80]}")
        dtype = torch.long if np.issubdtype(array.dtype, np.integer) or array.dtype == bool else torch.float32
        return torch.as_tensor(array, dtype=dtype).reshape(-1)

    def _columns(self, rows: list[Mapping[str, Any]]) -> dict[str, list[torch.Tensor]]:
        if not rows:
            raise DataError("cannot collate an empty batch")
        for i, row in enumerate(rows):
            if "input_ids" not in row:
                raise DataError(f"row {i} has no input_ids (keys: {sorted(row)}); encode the dataset first")
        defaults = {
            "attention_mask": lambda n: torch.ones(n, dtype=torch.long),
            "position_ids": lambda n: torch.arange(n, dtype=torch.long),
        }
        columns: dict[str, list[torch.Tensor]] = {}
        for key in self.model_keys:
            present = [key in row and row[key] is not None for row in rows]
            if all(present):
                columns[key] = [self.to_tensor(row[key]) for row in rows]
            elif key in defaults:  # filled per row, so rows that have them (packed rows) keep theirs
                columns[key] = [
                    self.to_tensor(row[key]) if has else defaults[key](len(row["input_ids"]))
                    for row, has in zip(rows, present, strict=True)
                ]
        lengths = [len(t) for t in columns["input_ids"]]
        for key, tensors in columns.items():
            if [len(t) for t in tensors] != lengths:
                raise DataError(f"{key} and input_ids have different lengths in a row; check the encoding")
        return columns

    def _collate(self, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
        columns = self._columns(rows)
        if self.padding_free:
            return self._pack(columns)
        return {key: self._pad(key, tensors) for key, tensors in columns.items()}

    def _pad(self, key: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        width = max(len(t) for t in tensors)
        out = torch.full((len(tensors), width), PAD_VALUES.get(key, 0), dtype=tensors[0].dtype)
        for i, t in enumerate(tensors):
            if self.padding_side == "right":
                out[i, : len(t)] = t
            else:
                out[i, width - len(t) :] = t
        return out

    @staticmethod
    def _pack(columns: dict[str, list[torch.Tensor]]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            key: torch.cat(tensors).unsqueeze(0) for key, tensors in columns.items() if key != "attention_mask"
        }
        # a sample starts at every row start and wherever position_ids restart at 0 (rows that are already packed)
        row_starts = np.cumsum([0] + [len(t) for t in columns["input_ids"]])
        restarts = torch.nonzero(batch["position_ids"][0] == 0).flatten().numpy()
        bounds = np.union1d(row_starts, restarts)
        cu = torch.as_tensor(bounds, dtype=torch.int32)
        longest = int((cu[1:] - cu[:-1]).max()) if len(cu) > 1 else 0
        batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu.clone(), max_length_q=longest, max_length_k=longest)
        return batch
