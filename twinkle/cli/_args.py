"""The argument groups of upstream's config system, one dataclass each, with upstream's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class ModelArgs:
    model_id: str | None = None
    model_cls: str | None = None
    tokenizer_id: str | None = None
    mixed_precision: str = "bf16"
    strategy: str = "accelerate"
    memory_efficient_init: bool = False
    gradient_checkpointing: bool = True
    trust_remote_code: bool = True
    load_weights: bool = True
    recompute_granularity: str = "full"
    recompute_method: str = "uniform"
    recompute_num_layers: int = 1
    recompute_modules: Any = None
    use_distributed_optimizer: bool = True
    variable_seq_lengths: bool = True
    ddp_config: Any = None
    fsdp_config: Any = None
    grad_scaler_config: Any = None
    enable_liger: bool = False
    enable_fused_ce: bool = True


@dataclass
class LoraArgs:
    use_lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: Any = None
    adapter_name: str = "default"
    lora_path: str | None = None


@dataclass
class DatasetArgs:
    dataset_id: str = ""
    subset_name: str = "default"
    split: str = "train"
    streaming: bool = False
    num_proc: int | None = None
    data_slice: str | None = None
    revision: str | None = None


@dataclass
class TemplateArgs:
    template_cls: str | None = None
    model_id: str | None = None
    max_length: int = 8192
    truncation_strategy: str = "raise"
    use_chat_template: bool = True
    enable_thinking: bool = True
    default_system: str | None = None


@dataclass
class TrainingArgs:
    max_steps: int = 200
    num_train_epochs: int | None = None
    batch_size: int = 8
    mini_batch_size: int | None = None
    micro_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    output_dir: str = "./output"
    save_steps: int = 50
    save_total_limit: int | None = None
    log_interval: int = 10
    eval_interval: int | None = None
    eval_samples: int | None = None
    train_samples: int | None = None
    resume_from_checkpoint: str | None = None
    resume_only_model: bool = False
    ignore_data_skip: bool = False
    seed: int = 42
    full_determinism: bool = False
    padding_free: bool = False


@dataclass
class OptimizerArgs:
    optimizer_cls: str = "AdamW"
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0


@dataclass
class SchedulerArgs:
    scheduler_cls: str = "CosineAnnealingLR"
    num_warmup_steps: int = 0
    num_training_steps: int | None = None
    t_max: int | None = None
    eta_min: float = 0.0
    lr_decay_steps: int | None = None
    max_lr: float | None = None


@dataclass
class LossArgs:
    loss_cls: str = "CrossEntropyLoss"
    loss_type: str = "sigmoid"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.1
    sft_weight: float = 1.0
    entropy_coef: float = 0.0
    ignore_index: int = -100


@dataclass
class SamplerArgs:
    sampler_type: str = "vLLMSampler"
    gpu_memory_utilization: float = 0.8
    max_model_len: int | None = None
    tensor_parallel_size: int | None = None
    enable_lora: bool = False
    max_lora_rank: int = 32
    enforce_eager: bool = False


@dataclass
class SamplingArgs:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_samples: int = 1
    logprobs: int | None = None
    seed: int | None = None
    stop: Any = None


@dataclass
class InfraArgs:
    mode: str = "local"
    nproc_per_node: int = 8
    ncpu_proc_per_node: int = 8
    model_gpus: int | None = None
    sampler_gpus: int | None = None
    ref_model_gpus: int | None = None
    world_size: int | None = None
    dp_size: int | None = None
    fsdp_size: int | None = None
    tp_size: int | None = None
    pp_size: int | None = None
    cp_size: int | None = None
    ep_size: int | None = None
    etp_size: int | None = None
    ep_fsdp_size: int | None = None
    vpp_size: int | None = None
    ulysses_size: int | None = None
    sequence_parallel: bool = False
    lazy_collect: bool = True


@dataclass
class ServerArgs:
    config: str | None = None
    ray_namespace: str = "twinkle_cluster"
    host: str = "0.0.0.0"
    port: int = 8000
    log_level: str = "INFO"


@dataclass
class RLArgs:
    num_generations: int = 8
    advantage_type: str = "GRPOAdvantage"
    advantage_scale: str = "group"
    reward_fns: Any = None
    student_model_id: str | None = None
    teacher_model_id: str | None = None
    gkd_beta: float = 0.5
    gkd_temperature: float = 1.0
    gkd_topk: int = 64
    router_replay_mode: str = "disabled"


@dataclass
class CheckpointArgs:
    save_optimizer: bool = True
    merge_and_sync: bool = True
    platform: str = "GPU"
    lora_sync_dir: str | None = None


#: attribute name -> group class, in upstream's (lookup) order
GROUPS: dict[str, type] = {
    "model": ModelArgs,
    "lora": LoraArgs,
    "dataset": DatasetArgs,
    "template": TemplateArgs,
    "training": TrainingArgs,
    "optimizer": OptimizerArgs,
    "scheduler": SchedulerArgs,
    "loss": LossArgs,
    "sampler": SamplerArgs,
    "sampling": SamplingArgs,
    "infra": InfraArgs,
    "server": ServerArgs,
    "rl": RLArgs,
    "checkpoint": CheckpointArgs,
}


@dataclass
class Args:
    """Every group as an attribute (``args.infra.fsdp_size``), plus ``extra`` for keys no field takes."""

    model: ModelArgs = field(default_factory=ModelArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    dataset: DatasetArgs = field(default_factory=DatasetArgs)
    template: TemplateArgs = field(default_factory=TemplateArgs)
    training: TrainingArgs = field(default_factory=TrainingArgs)
    optimizer: OptimizerArgs = field(default_factory=OptimizerArgs)
    scheduler: SchedulerArgs = field(default_factory=SchedulerArgs)
    loss: LossArgs = field(default_factory=LossArgs)
    sampler: SamplerArgs = field(default_factory=SamplerArgs)
    sampling: SamplingArgs = field(default_factory=SamplingArgs)
    infra: InfraArgs = field(default_factory=InfraArgs)
    server: ServerArgs = field(default_factory=ServerArgs)
    rl: RLArgs = field(default_factory=RLArgs)
    checkpoint: CheckpointArgs = field(default_factory=CheckpointArgs)
    extra: dict[str, Any] = field(default_factory=dict)

    def _group_args(self, name: str) -> dict[str, Any]:
        group = getattr(self, name)
        return {f.name: getattr(group, f.name) for f in fields(group) if getattr(group, f.name) is not None}

    def __getattr__(self, name: str) -> Any:
        # get_<group>_args() for every group, with upstream's special cases below
        if name.startswith("get_") and name.endswith("_args") and name[4:-5] in GROUPS:
            group = name[4:-5]
            return lambda: self._group_args(group)
        raise AttributeError(name)

    def get_model_args(self) -> dict[str, Any]:
        out = self._group_args("model")
        if "model_id" not in out and self.template.model_id is not None:
            out["model_id"] = self.template.model_id
        return out

    def get_template_args(self) -> dict[str, Any]:
        out = self._group_args("template")
        if "model_id" not in out and self.model.model_id is not None:
            out["model_id"] = self.model.model_id
        return out

    def get_optimizer_args(self) -> dict[str, Any]:
        out = self._group_args("optimizer")
        if "learning_rate" in out:
            out["lr"] = out.pop("learning_rate")
        return out

    def get_lora_args(self) -> dict[str, Any]:
        """What ``peft.LoraConfig(**...)`` takes: target_modules (default 'all-linear'), r, lora_alpha, dropout."""
        return {
            "target_modules": self.lora.lora_target_modules or "all-linear",
            "r": self.lora.lora_r,
            "lora_alpha": self.lora.lora_alpha,
            "lora_dropout": self.lora.lora_dropout,
        }

    _MISSING = object()

    def _lookup(self, key: str) -> Any:
        for name in GROUPS:
            group = getattr(self, name)
            if key in {f.name for f in fields(group)}:
                return getattr(group, key)
        return self.extra.get(key, Args._MISSING)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` from the first group that has it (table order), then ``extra``."""
        value = self._lookup(key)
        return default if value is Args._MISSING else value

    def __getitem__(self, key: str) -> Any:
        value = self._lookup(key)
        if value is Args._MISSING:
            raise KeyError(key)
        return value

    def to_dict(self) -> dict[str, Any]:
        """All groups flattened into one dict (later groups do not overwrite earlier keys), then ``extra``."""
        out: dict[str, Any] = {}
        for name in GROUPS:
            group = getattr(self, name)
            for f in fields(group):
                out.setdefault(f.name, getattr(group, f.name))
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out
