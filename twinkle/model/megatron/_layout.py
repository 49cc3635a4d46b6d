"""Pure helpers of the Megatron backend, testable without Megatron: mesh -> parallel sizes, per-micro-batch slicing
of loss arguments, LoRA target expansion, sequence padding, and the optimizer/scheduler names it accepts."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from twinkle.errors import ConfigError

__all__ = [
    "MEGATRON_ORDER",
    "check_optimizer_name",
    "check_scheduler_name",
    "expand_target_modules",
    "megatron_parallel_sizes",
    "padded_seq_len",
    "slice_loss_kwargs",
]

# Megatron's rank order, fastest first; DeviceMesh.from_sizes builds (pp, dp, cp, tp) with tp fastest: the same
MEGATRON_ORDER = "tp-cp-ep-dp-pp"
_LINEAR_TYPES = ("TELinear", "TEColumnParallelLinear", "TERowParallelLinear", "TELayerNormColumnParallelLinear",
                 "TEGroupedLinear", "TEColumnParallelGroupedLinear", "TERowParallelGroupedLinear", "Linear")
_EMBEDDING_TYPES = ("VocabParallelEmbedding", "LanguageModelEmbedding", "Embedding")
_ROUTER_TYPES = ("TopKRouter", "Router")


def megatron_parallel_sizes(mesh: Any, is_moe: bool = False) -> dict[str, Any]:
    """The ``mpu.initialize_model_parallel`` sizes a ``DeviceMesh`` stands for.

    tp/pp/cp come from the mesh dimensions, ep from ``mesh.ep_size`` (carved out of dp x cp by Megatron, not a mesh
    dimension), etp from ``etp_size``, vpp from ``vpp_size`` (0 or 1: none). Sequence parallelism is the mesh's
    flag, switched on for MoE with tp > 1.

    Raises:
        ConfigError: an fsdp dimension, a dp that is not world / (tp * pp * cp), or an ep not dividing dp * cp.
    """
    if mesh.fsdp_world_size:
        raise ConfigError(
            "Megatron shards with its distributed optimizer, not FSDP: build the mesh with "
            "DeviceMesh.from_sizes(dp_size=..., tp_size=..., pp_size=..., cp_size=...) and no fsdp_size"
        )
    tp = mesh.tp_world_size or 1
    pp = mesh.pp_world_size or 1
    cp = mesh.cp_world_size or 1
    world = mesh.world_size
    if world % (tp * pp * cp):
        raise ConfigError(f"tp*pp*cp = {tp * pp * cp} must divide the world size {world}")
    dp = world // (tp * pp * cp)
    mesh_dp = (mesh.dp_world_size or 1) * (mesh.fsdp_world_size or 1)
    if mesh_dp != dp:
        raise ConfigError(
            f"the mesh's data-parallel size {mesh_dp} is not world/(tp*pp*cp) = {dp}; Megatron meshes use dp, tp, pp "
            f"and cp only: DeviceMesh.from_sizes(dp_size={dp}, tp_size={tp}, pp_size={pp}, cp_size={cp})"
        )
    ep = mesh.ep_size or 1
    if (dp * cp) % ep:
        raise ConfigError(f"ep_size={ep} must divide dp*cp = {dp * cp} (Megatron carves experts out of them)")
    vpp = mesh.vpp_size if mesh.vpp_size and mesh.vpp_size > 1 else None
    if vpp is not None and pp == 1:
        raise ConfigError(f"vpp_size={vpp} needs pipeline parallelism (pp_size > 1)")
    return {
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": pp,
        "context_parallel_size": cp,
        "expert_model_parallel_size": ep,
        "expert_tensor_parallel_size": mesh.etp_size or 1,
        "virtual_pipeline_model_parallel_size": vpp,
        "data_parallel_size": dp,
        "sequence_parallel": bool(mesh.sequence_parallel or (is_moe and tp > 1)),
        "order": MEGATRON_ORDER,
    }


def slice_loss_kwargs(kwargs: dict[str, Any], start: int, size: int, batch: int) -> dict[str, Any]:
    """The loss arguments of one micro-batch: per-sample values (sequences as long as the batch, e.g. ragged
    ``old_logps`` or ``advantages``) are cut to ``[start, start + size)``; everything else passes whole."""
    out = {}
    for key, value in kwargs.items():
        length = None
        if isinstance(value, (list, tuple)):
            length = len(value)
        elif hasattr(value, "shape") and len(getattr(value, "shape", ())) >= 1:
            length = int(value.shape[0])
        out[key] = value[start:start + size] if length == batch and batch > size else value
    return out


def padded_seq_len(lengths: Iterable[int], cp: int = 1, tp: int = 1, sequence_parallel: bool = False,
                   variable_seq_lengths: bool = True) -> int:
    """The sequence length micro-batches run at: the longest one with ``variable_seq_lengths``; otherwise rounded up
    to a multiple of 2*cp (context parallelism) and of tp under sequence parallelism."""
    longest = max(lengths)
    if variable_seq_lengths:
        return longest
    multiple = 2 * cp if cp > 1 else 1
    if sequence_parallel and tp > 1:
        multiple = multiple * tp // math.gcd(multiple, tp)
    return -(-longest // multiple) * multiple


def expand_target_modules(target: Any, modules: Iterable[tuple[str, Any]]) -> list[str]:
    """LoRA targets on a Megatron model: ``'all-linear'`` (TE linear, LayerNorm-column, grouped and ``nn.Linear``
    modules, never ``output_layer``), ``'all-embedding'``, ``'all-router'``, or names/suffixes given as a list."""
    modules = list(modules)

    def leaves(type_names: tuple[str, ...], skip_output: bool = False) -> list[str]:
        found = set()
        for name, module in modules:
            if type(module).__name__ in type_names and not (skip_output and name.split(".")[-1] == "output_layer"):
                found.add(name.split(".")[-1])
        return sorted(found)

    targets = [target] if isinstance(target, str) else list(target or [])
    out: set[str] = set()
    for item in targets:
        if item == "all-linear":
            out.update(leaves(_LINEAR_TYPES, skip_output=True))
        elif item == "all-embedding":
            out.update(leaves(_EMBEDDING_TYPES))
        elif item == "all-router":
            out.update(leaves(_ROUTER_TYPES))
        else:
            out.add(item)
    return sorted(out)


def check_optimizer_name(name: Any) -> None:
    if name not in (None, "", "default", "MegatronOptimizer", "Adam"):
        raise NotImplementedError(
            f"MegatronModel builds Megatron's distributed Adam only; optimizer {name!r} is not supported (use "
            f"'default')"
        )


def check_scheduler_name(name: Any) -> None:
    if name not in (None, "", "default", "OptimizerParamScheduler"):
        raise NotImplementedError(
            f"MegatronModel uses Megatron's OptimizerParamScheduler; scheduler {name!r} is not supported (use "
            f"'default')"
        )
