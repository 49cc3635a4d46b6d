"""Padding-free training for ``TransformersModel``: one packed row per batch, attention per sample.

A padded batch ``[B, W]`` spends compute on ``B*W - N`` padding tokens (N = the real ones); with chat-SFT lengths
that is often half of it. ``pack`` turns the padded batch into one row ``[1, N]`` whose ``position_ids`` restart at
every sample, plus ``cu_seq_lens_*`` (the sample boundaries). The model then attends within each sample only:

- ``twinkle_varlen`` (this module's attention function, used in place of ``sdpa``) runs one causal
  ``scaled_dot_product_attention`` per sample. That is exact (no cross-sample attention) and costs
  ``sum(len_i**2)`` instead of the ``N**2`` of a block-diagonal mask, which is why it beats transformers' own
  packed-sequence mask on the CPU. When a real mask is present (a padded batch, sliding windows, a KV cache with an
  offset) it defers to transformers' ``sdpa`` unchanged.
- ``flash_attention_*`` read ``cu_seq_lens_*`` natively, so packing works with them too.

It also computes logits only where a label is (``logits_to_keep``): SFT prompts carry no loss, so their
``hidden -> vocab`` projection and float32 log-softmax are pure waste.

Only token-level consumers may see the packed view (the sum over labelled tokens does not care how rows are laid
out); ``token_level`` says which do. Row-level losses (DPO, GRPO) keep the padded path.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

VARLEN_ATTENTION = "twinkle_varlen"
# attention implementations that keep packed samples apart from cu_seq_lens / position_ids
PACKING_ATTENTION = (VARLEN_ATTENTION, "flash_attention_2", "flash_attention_3", "flash_attention_4")
# keys the padded batch may carry that a packed forward cannot honour
_UNPACKABLE = ("inputs_embeds", "pixel_values", "image_grid_thw", "cu_seq_lens_q")

__all__ = ["VARLEN_ATTENTION", "Packed", "enable", "pack", "token_level", "varlen_attention_forward"]


# ---------------------------------------------------------------------------------------------- attention


def _segment_bounds(batch: int, length: int, cu_seq_lens: Any, position_ids: Any) -> list[list[int]] | None:
    """Per batch row, the sample start offsets plus the row length; None when every row is one sample."""
    if isinstance(cu_seq_lens, torch.Tensor) and batch == 1:
        # pack() leaves the host copy on the tensor: reading a CUDA tensor in every layer would sync each time
        bounds = getattr(cu_seq_lens, "_twinkle_bounds", None) or cu_seq_lens.tolist()
        if len(bounds) >= 2 and bounds[0] == 0 and bounds[-1] == length:
            return None if len(bounds) == 2 else [bounds]
    if not isinstance(position_ids, torch.Tensor) or position_ids.shape[-1] != length:
        return None
    positions = position_ids.expand(batch, length) if position_ids.shape[0] != batch else position_ids
    restarts = positions[:, 1:] == 0
    if not bool(restarts.any()):
        return None
    rows = []
    for row in restarts:
        starts = (torch.nonzero(row).flatten() + 1).tolist()
        rows.append([0, *starts, length])
    return rows


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sample; ``sdpa`` whenever there is a mask or a single sample.

    Shapes as in every transformers attention function: ``query`` ``[B, H, S, D]``, ``key``/``value``
    ``[B, H_kv, S, D]``; returns ``[B, S, H, D]``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def fallback() -> tuple[torch.Tensor, None]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )

    plain = (
        attention_mask is not None
        or is_causal is False
        or not getattr(module, "is_causal", True)
        or kwargs.get("sliding_window") is not None
        or query.shape[2] != key.shape[2]
        or query.shape[2] < 2
    )
    if plain:
        return fallback()
    batch, _, length, _ = query.shape
    bounds = _segment_bounds(batch, length, kwargs.get("cu_seq_lens_q"), kwargs.get("position_ids"))
    if bounds is None:
        return fallback()
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    p = dropout if module.training else 0.0
    rows = []
    for b, row in enumerate(bounds):
        pieces = [
            torch.nn.functional.scaled_dot_product_attention(
                query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e],
                dropout_p=p, scale=scaling, is_causal=e - s > 1, enable_gqa=gqa,
            )
            for s, e in itertools.pairwise(row)
            if e > s
        ]
        rows.append(torch.cat(pieces, dim=2))
    out = torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous(), None


def _varlen_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """No mask for a fresh causal forward without padding (the attention finds the samples); else ``sdpa``'s mask.

    Returning None is what spares the ``N x N`` block-diagonal mask transformers would build for a packed row.
    """
    from transformers.masking_utils import sdpa_mask

    q_length = kwargs.get("q_length", args[1] if len(args) > 1 else None)
    kv_length = kwargs.get("kv_length", args[2] if len(args) > 2 else None)
    simple = (
        kwargs.get("attention_mask") is None
        and not kwargs.get("q_offset")
        and not kwargs.get("kv_offset")
        and kwargs.get("local_size") is None
        and not kwargs.get("use_vmap")  # extra mask functions (image tokens, ...) need the real mask
        and q_length is not None
        and q_length == kv_length
    )
    return None if simple else sdpa_mask(*args, **kwargs)


def register() -> None:
    """Make ``twinkle_varlen`` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, _varlen_mask)


def enable(model: Any) -> bool:
    """Switch an ``sdpa`` model to ``twinkle_varlen``; True when the model can train on packed rows.

    ``eager`` (chosen for attention weights) and other implementations are left alone and stay padded, and so are
    composite (vision-language) models: their masks can carry more than causality (bidirectional image blocks).
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "sub_configs", None):
        return False
    register()
    if getattr(config, "_attn_implementation", None) == "sdpa":
        try:
            model.set_attn_implementation(VARLEN_ATTENTION)
        except (AttributeError, ValueError, KeyError):
            return False
    return getattr(config, "_attn_implementation", None) in PACKING_ATTENTION


# ---------------------------------------------------------------------------------------------- batches

# consumers whose result is a sum (or mean) over labelled tokens, so the packed view gives the same numbers
_TOKEN_LEVEL_TYPES: tuple[str, ...] = (
    "twinkle.loss.cross_entropy.CrossEntropyLoss",
    "twinkle.loss.cross_entropy.ChunkedCrossEntropyLoss",
    "twinkle.metric._loss.LossMetric",
    "twinkle.metric._accuracy.Accuracy",
    "twinkle.metric._train.TrainMetric",
)


def token_level(obj: Any) -> bool:
    """True when ``obj`` (a loss or metric) only sums over labelled tokens, so row layout does not matter.

    The built-in cross-entropy losses and the default metrics qualify by exact type (a subclass may be
    row-level); any other class opts in with a ``token_level = True`` attribute.
    """
    if obj is None:
        return True
    if getattr(obj, "token_level", False) is True:
        return True
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}" in _TOKEN_LEVEL_TYPES


@dataclass
class Packed:
    """A padded batch as one packed row, and the way back to the row layout.

    Attributes:
        batch: the model inputs ``[1, N]`` (``input_ids``, ``position_ids``, ``cu_seq_lens_*``, ``max_length_*``,
            maybe ``logits_to_keep``), ``labels`` aligned with the logits the model will return (``[1, M]`` when
            only labelled positions get logits), the other ``[B, W]`` tensors packed, and ``num_rows`` = B.
        flat: for each packed token, its index in the flattened padded layout ``[B * W]``.
        keep: indices (into the N packed tokens) that get logits, or None for all of them.
    """

    batch: dict[str, Any]
    flat: torch.Tensor
    keep: torch.Tensor | None
    rows: int
    width: int

    def unpack(self, value: torch.Tensor) -> torch.Tensor:
        """``[1, N or M, ...]`` back to the padded ``[B, W, ...]`` layout, zeros where nothing was computed."""
        index = self.flat if self.keep is None else self.flat[self.keep]
        out = value.new_zeros((self.rows * self.width, *value.shape[2:]))
        out[index] = value[0]
        return out.view(self.rows, self.width, *value.shape[2:])

    def unpack_outputs(self, outputs: dict[str, Any]) -> dict[str, Any]:
        length = len(self.flat) if self.keep is None else len(self.keep)
        return {
            k: self.unpack(v) if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[:2] == (1, length) else v
            for k, v in outputs.items()
        }


def pack(batch: dict[str, Any], labelled_logits_only: bool = False) -> Packed | None:
    """Pack a padded batch (``input_ids`` and ``attention_mask`` ``[B, W]``, left or right padding).

    Returns None when the batch cannot be packed faithfully: no 2-D ``attention_mask``, a mask with holes inside a
    row, multimodal or embedding inputs, or a batch that is already packed.
    """
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    if not (isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor)) or ids.dim() != 2:
        return None
    if mask.shape != ids.shape or any(batch.get(k) is not None for k in _UNPACKABLE):
        return None
    rows, width = ids.shape
    real = mask.bool()
    counts = real.sum(1)
    cols = torch.arange(width, device=ids.device).expand(rows, width)
    first = torch.where(real, cols, width).amin(1)
    last = torch.where(real, cols, -1).amax(1)
    if not bool(((counts == 0) | (last - first + 1 == counts)).all()):  # holes: not a padding mask
        return None
    flat = torch.nonzero(real.reshape(-1)).flatten()
    n = len(flat)
    if n == 0:
        return None

    def packed(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(rows * width, *t.shape[2:])[flat].unsqueeze(0)

    positions = batch.get("position_ids")
    if isinstance(positions, torch.Tensor) and positions.shape == ids.shape:
        pos = packed(positions).clamp(min=0)
    else:
        pos = (real.long().cumsum(1) - 1).reshape(-1)[flat].unsqueeze(0)
    # a sample starts at every row start and wherever position_ids restart at 0 (rows that hold packed samples)
    starts = torch.zeros(n, dtype=torch.bool, device=ids.device)
    row_starts = torch.cumsum(counts, 0) - counts
    starts[row_starts[counts > 0]] = True
    starts |= pos[0] == 0
    cu = torch.cat([torch.nonzero(starts).flatten(), torch.tensor([n], device=ids.device)]).to(torch.int32)
    bounds = cu.tolist()
    longest = max(b - a for a, b in itertools.pairwise(bounds))
    setattr(cu, "_twinkle_bounds", bounds)  # noqa: B010 - torch.Tensor declares no such attribute for mypy

    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key in ("attention_mask", "position_ids"):
            continue
        if isinstance(value, torch.Tensor) and value.shape[:2] == (rows, width):
            out[key] = packed(value)
        else:
            out[key] = value
    out.update(position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    out["num_rows"] = rows

    keep = None
    labels = out.get("labels")
    if labelled_logits_only and isinstance(labels, torch.Tensor) and labels.dtype in (torch.long, torch.int):
        keep = torch.nonzero(labels[0] != -100).flatten()
        if len(keep) == 0 or len(keep) == n:
            keep = None  # nothing to spare (or nothing labelled: keep a loss with a graph)
        else:
            out["logits_to_keep"] = keep
            for key, value in list(out.items()):  # the loss's view: only the positions that get logits
                if key not in ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "logits_to_keep") and (
                    isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (1, n)
                ):
                    out[key] = value[:, keep]
    return Packed(batch=out, flat=flat, keep=keep, rows=rows, width=width)
