"""Ulysses sequence parallelism for the Transformers backend (``DeviceMesh(..., ulysses_size=n)``).

The ``n`` ranks of a sequence-parallel group hold the same rows (they share one data rank) and each keeps a
contiguous ``1/n`` of every sequence: the batch is right-padded to a multiple of ``n`` and sliced on the time axis,
with each slice keeping its global ``position_ids`` (so rotary embeddings see the true positions). Attention is
the only layer that mixes positions: a registered attention function gathers the group's query/key/value slices
(``torch.distributed.nn`` all-gather, differentiable), keeps this rank's ``1/n`` of the heads over the whole
sequence, runs causal SDPA, and gathers the heads back before taking this rank's time slice again. (Upstream's
Ulysses exchanges with all-to-all; the all-gather form moves more data but runs on gloo and is exact.)

Losses are sums over this rank's labelled tokens; the model all-reduces token counts over every rank, so the
group's gradient equals one process's. Right padding only: the causal mask over the whole sequence is exact for
real tokens because padding comes after them (padded positions carry label -100). Padding-free (packed) batches
are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from twinkle.errors import UnsupportedParallelismError

ATTN_NAME = "twinkle_ulysses"
_state: dict[str, Any] = {"group": None, "size": 1, "rank": 0}


def build_group(mesh: Any) -> tuple[Any, int, int]:
    """Create (once) the process groups of ranks sharing a data rank; returns (my group, size, my index)."""
    size = mesh.ulysses_size or 1
    by_data_rank: dict[int, list[int]] = {}
    for rank in sorted(int(r) for r in mesh.mesh.reshape(-1)):
        by_data_rank.setdefault(mesh.get_data_rank(rank), []).append(rank)
    me = dist.get_rank()
    mine = None
    for ranks in by_data_rank.values():  # every rank creates every group, in the same order
        group = dist.new_group(ranks)
        if me in ranks:
            mine = (group, ranks.index(me))
    assert mine is not None, f"rank {me} is not in the mesh {mesh!r}"
    _state.update(group=mine[0], size=size, rank=mine[1])
    return mine[0], size, mine[1]


def _gather(t: torch.Tensor, dim: int) -> torch.Tensor:
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous(), group=_state["group"]), dim=dim)


def ulysses_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Any, dropout: float = 0.0, scaling: float | None = None, **kwargs: Any):
    """query ``[B, H, T/n, D]``, key/value ``[B, Hkv, T/n, D]`` -> ``[B, T/n, H, D]`` (the HF attention contract)."""
    n, r = _state["size"], _state["rank"]
    heads = query.shape[1]
    if key.shape[1] != heads:  # grouped-query attention: expand the kv heads first
        repeat = heads // key.shape[1]
        key = key.repeat_interleave(repeat, dim=1)
        value = value.repeat_interleave(repeat, dim=1)
    if heads % n:
        raise UnsupportedParallelismError(f"ulysses_size={n} must divide the number of attention heads ({heads})")
    local_t = query.shape[2]
    h = heads // n
    q, k, v = (_gather(x, dim=2)[:, r * h:(r + 1) * h] for x in (query, key, value))  # [B, H/n, T, D]
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling)
    out = _gather(out, dim=1)[:, :, r * local_t:(r + 1) * local_t]  # [B, H, T/n, D]
    return out.transpose(1, 2).contiguous(), None


def register(model: torch.nn.Module) -> None:
    """Point the model's attention at ``ulysses_attention`` (transformers' AttentionInterface)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, ulysses_attention)
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = ATTN_NAME


_PAD = {"input_ids": 0, "labels": -100}


def shard_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Right-pad the time axis to a multiple of the group size and keep this rank's contiguous slice."""
    n, r = _state["size"], _state["rank"]
    if any(k.startswith("cu_seq_lens") for k in batch):
        raise UnsupportedParallelismError("Ulysses sequence parallelism does not take padding-free (packed) batches")
    ids = batch["input_ids"]
    rows, length = ids.shape
    padded = -(-length // n) * n
    chunk = padded // n
    out = dict(batch)
    if "position_ids" not in out or out["position_ids"] is None:
        out["position_ids"] = torch.arange(length, device=ids.device).expand(rows, length)
    for key in ("input_ids", "labels", "position_ids"):
        value = out.get(key)
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[1] != length:
            continue
        if padded != length:
            if key == "position_ids":
                extra = torch.arange(length, padded, device=value.device).expand(rows, padded - length)
                value = torch.cat([value.clamp(min=0), extra.to(value.dtype)], dim=1)
            else:
                value = F.pad(value, (0, padded - length), value=_PAD[key])
        out[key] = value[:, r * chunk:(r + 1) * chunk]
    out.pop("attention_mask", None)  # causal over the whole sequence; padding sits after the real tokens
    return out
