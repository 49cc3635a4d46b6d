"""``MegatronStrategy``: build a Megatron-Core model from a Hugging Face folder on a ``DeviceMesh``. [never run]

Written against gpu.md §3.2 and never executed (no GPU here). Needs CUDA, megatron-core, TransformerEngine and
mcore_bridge (``pip install 'twinkle-commons[megatron]'``); the size mapping it relies on
(:func:`~twinkle.model.megatron._layout.megatron_parallel_sizes`) is tested on the CPU.
"""

from __future__ import annotations

import os
from typing import Any

from twinkle.model.megatron._layout import megatron_parallel_sizes
from twinkle.utils.device_mesh import DeviceMesh
from twinkle.utils.requires import require_cuda, requires

__all__ = ["MegatronStrategy", "require_megatron"]


def require_megatron(what: str) -> tuple[Any, Any]:
    """Check CUDA, megatron-core, TransformerEngine and mcore_bridge; returns (megatron.core, mcore_bridge).

    Raises:
        MissingDependencyError: the first thing missing, with the pip extra that brings it.
    """
    require_cuda(what, extra="megatron")
    core = requires("megatron.core", extra="megatron", what=what, package="megatron-core")
    requires("transformer_engine", extra="megatron", what=what, package="transformer-engine[pytorch]")
    bridge = requires("mcore_bridge", extra="megatron", what=what, package="mcore-bridge")
    return core, bridge


class MegatronStrategy:
    """Initialise Megatron's model parallelism from a mesh and build the model chunks.

    Args:
        model_dir: the Hugging Face model folder.
        device_mesh: tp/pp/cp dimensions, ``ep_size``, ``etp_size``, ``vpp_size``, ``sequence_parallel``.
        use_distributed_optimizer, mixed_precision, seed, variable_seq_lengths: as ``MegatronModel``.
        config: extra keyword arguments of the mcore config.
        ddp_config: extra keyword arguments of Megatron's ``DistributedDataParallelConfig``.
    """

    def __init__(self, model_dir: str, device_mesh: DeviceMesh, use_distributed_optimizer: bool = True,
                 mixed_precision: str = "bf16", seed: int = 42, variable_seq_lengths: bool = True,
                 config: dict | None = None, ddp_config: dict | None = None, **kwargs: Any) -> None:
        self.core, self.bridge = require_megatron("MegatronStrategy")
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
        self.model_dir = model_dir
        self.device_mesh = device_mesh
        self.use_distributed_optimizer = use_distributed_optimizer
        self.mixed_precision = mixed_precision
        self.seed = seed
        self.variable_seq_lengths = variable_seq_lengths
        self.config_kwargs = {**(config or {}), **kwargs}
        self.ddp_kwargs = ddp_config or {}
        self.sizes: dict[str, Any] = {}
        self.model_config: Any = None

    def initialize(self, is_moe: bool = False) -> None:
        from megatron.core import mpu, tensor_parallel

        self.sizes = megatron_parallel_sizes(self.device_mesh, is_moe=is_moe)
        kw = {k: v for k, v in self.sizes.items() if k not in ("data_parallel_size", "sequence_parallel")}
        mpu.initialize_model_parallel(**kw)
        assert mpu.get_data_parallel_world_size() == self.sizes["data_parallel_size"], "mesh dp != Megatron dp"
        tensor_parallel.model_parallel_cuda_manual_seed(self.seed)

    def build(self, load_weights: bool = True) -> list[Any]:
        """The model chunks (one per virtual pipeline stage), weights loaded, wrapped for training."""
        import torch
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.transformer.module import Float16Module
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(self.model_dir, trust_remote_code=True)
        is_moe = bool(getattr(hf_config, "num_experts", 0) or getattr(hf_config, "num_local_experts", 0))
        self.initialize(is_moe=is_moe)
        mcore_kw = self.bridge.hf_to_mcore_config(hf_config)
        mcore_kw.update(self.config_kwargs)
        mcore_kw.update(
            calculate_per_token_loss=True, moe_token_dispatcher_type="alltoall",
            sequence_parallel=self.sizes["sequence_parallel"], variable_seq_lengths=self.variable_seq_lengths,
            bf16=self.mixed_precision == "bf16", fp16=self.mixed_precision == "fp16",
            **{k: v for k, v in self.sizes.items() if k.endswith("_size") and k != "data_parallel_size"},
        )
        self.model_config = self.bridge.ModelConfig(use_cpu_initialization=True, **mcore_kw)
        models = self.bridge.get_mcore_model(self.model_config)
        if load_weights:
            self.model_config.bridge.load_weights(models, self.model_dir)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False, overlap_param_gather=False,
            use_distributed_optimizer=self.use_distributed_optimizer, **self.ddp_kwargs)
        if torch.distributed.get_world_size() == 1:
            for model in models:
                model.ddp_config = ddp_config  # world size 1: no wrapper, the optimizer still reads the config
            return models
        wrapped = []
        for i, model in enumerate(models):
            model = Float16Module(self.model_config, model) if self.mixed_precision in ("bf16", "fp16") else model
            wrapped.append(DistributedDataParallel(self.model_config, ddp_config, model,
                                                   disable_bucketing=i > 0))
        return wrapped
