"""Count the names of the library contract (shared/twinkle-api/library.md) that exist here, by module.

    PYTHONPATH=. python scripts/contract_names.py

A name "exists" when it imports (a module) or is an attribute of its module / class. Names left out on purpose
raise ``twinkle.errors.NotBuiltError`` naming the feature; they are counted apart. P2 includes P2g.
"""

from __future__ import annotations

import importlib
import sys
from collections import defaultdict

P1 = {
    "twinkle": ["get_logger", "Platform", "DeviceMesh"],
    "twinkle.utils.platform": ["Platform.get_rank", "Platform.get_local_rank", "Platform.is_local_master",
                               "Platform.get_platform", "Platform.device_prefix"],
    "twinkle.utils.device_mesh": ["DeviceMesh.data_rank", "DeviceMesh.get_tp_ranks", "DeviceMesh.is_tp_last_rank",
                                  "DeviceMesh.is_pp_first_rank", "DeviceMesh.is_pp_last_rank"],
    "twinkle.cli": ["CLI", "Args", "ModelArgs", "LoraArgs", "DatasetArgs", "TemplateArgs", "TrainingArgs",
                    "OptimizerArgs", "SchedulerArgs", "LossArgs", "SamplerArgs", "SamplingArgs", "InfraArgs",
                    "ServerArgs", "RLArgs", "CheckpointArgs", "ConfigSource", "DotEnvSource", "EnvVarSource",
                    "YamlSource", "CLISource", "ConfigResolver", "ValueCaster"],
    "twinkle.loss": ["SimPOLoss", "CPOLoss", "ORPOLoss", "DPOLoss", "LigerFusedLinearCrossEntropyLoss"],
    "twinkle.metric": ["DPOMetric"],
    "twinkle.preprocessor": ["EmojiDPOProcessor", "GSM8KProcessor"],
    "twinkle.preprocessor.llm": ["GSM8KProcessor", "SelfCognitionProcessor"],
    "twinkle.preprocessor.dpo": ["EmojiDPOProcessor"],
    "twinkle.dataset": ["Dataset.encode", "LazyDataset.do_encode", "LazyDataset.do_check"],
    "twinkle.dataloader": ["DataLoader.resume_from_checkpoint"],
    "twinkle.data_format": ["Trajectory", "Message"],
    "twinkle.kernel": ["kernelize", "liger_builtin", "npu_builtin"],
    "twinkle.utils.framework": ["Torch"],
    "twinkle.model.transformers.strategy": ["AccelerateStrategy", "NativeFSDPStrategy"],
    "twinkle.model": ["TransformersModel.forward", "TransformersModel.save", "TransformersModel.add_metric"],
}

P2 = {
    "twinkle": ["GPU", "NPU", "Plugin", "requires", "exists", "check_unsafe", "find_free_port", "find_node_ip",
                "framework_util", "torch_util", "trust_remote_code", "__version__", "__release_datetime__"],
    "twinkle.loss": ["GRPOLoss", "GSPOLoss", "SAPOLoss", "CISPOLoss", "BNPOLoss", "DRGRPOLoss", "GKDLoss",
                     "InfonceLoss", "torch_loss_mapping"],
    "twinkle.metric": ["EmbeddingMetric", "GRPOMetric", "GSPOMetric", "CISPOMetric"],
    "twinkle.preprocessor": ["CountdownProcessor", "CLEVRProcessor", "OlympiadBenchProcessor"],
    "twinkle.preprocessor.mm": ["CLEVRProcessor"],
    "twinkle.preprocessor.olympiad_bench": ["OlympiadBenchProcessor"],
    "twinkle.preprocessor.base": ["Preprocessor", "DataFilter"],
    "twinkle.reward": ["MultiModalAccuracyReward", "OlympiadBenchAccuracyReward", "OlympiadBenchFormatReward",
                       "OlympiadBenchQualityReward"],
    "twinkle.dataloader": ["RetrySampler", "DeviceMeshSampler", "DeviceMeshIterableFetcher"],
    "twinkle.data_format": ["ToolCall", "Tool", "LossOutput", "pack_value", "user_data_get"],
    "twinkle.template": ["DeepseekV4Template", "ToolCallParser", "ToolCallRegistry", "HermesQwenParser",
                         "ReActParser", "ClineParser", "VCPParser", "Template.parse_tool_call",
                         "Template.clean_tool_call"],
    "twinkle.template.tools": ["HermesQwenParser", "ReActParser", "ClineParser", "VCPParser"],
    "twinkle.utils": ["Framework", "find_all_linears", "selective_log_softmax", "to_device"],
    "twinkle.utils.parallel": ["PosixFileLock", "processing_lock"],
    "twinkle.utils.safetensors": ["SafetensorLazyLoader", "StreamingSafetensorSaver"],
    "twinkle.patch": ["Patch", "apply_patch", "apply_context"],
    "twinkle.patch.no_split_modules": ["NoSplitModulesPatch"],
    "twinkle.notifier": ["Notifier", "DingNotifier", "notify_exception"],
    "twinkle.hub.hub": ["HubOperation", "MSHub", "HFHub"],
    "twinkle.hub.model_alias": ["load_model_alias_map", "resolve_model_id_alias", "build_model_alias_map"],
    "twinkle.kernel": ["hub"],
    "twinkle.model": ["TransformersModel.upload_to_hub", "TransformersModel._lazy_wrap_model",
                      "TransformersModel.resume_from_checkpoint", "TransformersModel.set_optimizer"],
    "twinkle_agentic.rollout": ["Rollout", "MultiTurnRollout", "MultiTurnCondenseRollout", "APIMultiTurnRollout"],
    "twinkle_agentic.tools": ["Tool", "ToolManager"],
    "twinkle_agentic.envs": ["Env", "EnvTool", "OpenEnv", "EnvPool"],
    "twinkle_agentic.reward": ["F1Reward", "CoTReward", "ToolExploreReward"],
    "twinkle_agentic.preprocessor": ["QualityPreprocessor"],
    "twinkle_agentic.protocol.openai": ["OpenAI"],
}


def status(module: str, name: str) -> str:
    """'ok', 'not built' (raises NotBuiltError naming the feature) or 'missing'."""
    from twinkle.errors import NotBuiltError

    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except NotBuiltError:
        return "not built"
    except (ImportError, AttributeError):
        return "missing"
    return "ok"


def count(table: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "not built": 0, "missing": 0})
    for module, names in table.items():
        for name in names:
            out[module][status(module, name)] += 1
    return dict(out)


def main() -> int:
    for label, table in (("P1", P1), ("P2 (incl. P2g)", P2)):
        counts = count(table)
        total = {k: sum(c[k] for c in counts.values()) for k in ("ok", "not built", "missing")}
        print(f"{label}: {total['ok']} of {sum(total.values())} exist, {total['not built']} raise NotBuiltError, "
              f"{total['missing']} missing")
        for module, c in counts.items():
            print(f"  {module:40s} {c['ok']:3d} ok  {c['not built']:2d} not built  {c['missing']:2d} missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
