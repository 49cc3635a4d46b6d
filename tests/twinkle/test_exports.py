"""The public surface: what users may import, and the exception tree."""

import importlib

import pytest

import twinkle
from twinkle import errors

TOP_LEVEL = {
    "initialize", "remote_class", "remote_function", "get_device_placement", "is_master",
    "DeviceMesh", "DeviceGroup", "Platform", "init_twinkle_client", "init_tinker_client",
}

PACKAGES = {
    "twinkle.dataset": {
        "Dataset", "DatasetMeta", "IterableDataset", "IterablePackingDataset", "LazyDataset", "PackingDataset",
        "pack_lengths",
    },
    "twinkle.dataloader": {"DataLoader"},
    "twinkle.template": {"Template", "Qwen3_5Template", "TRUNCATION_STRATEGIES", "get_template"},
    "twinkle.preprocessor": {
        "Preprocessor", "DataFilter", "Filter", "SelfCognitionProcessor", "AlpacaProcessor", "GSM8KProcessor",
        "CompetitionMathProcessor", "CompetitionMathGRPOProcessor", "get_preprocessor",
    },
    "twinkle.processor": {"InputProcessor", "PAD_VALUES"},
    "twinkle.data_format": {
        "InputFeature", "Message", "Trajectory", "ModelOutput", "SamplingParams", "SampledSequence",
        "SampleResponse", "get_user_data", "set_user_data",
    },
    "twinkle.hub": {"HubId", "download_dataset", "download_model", "is_local_path", "parse_hub_id",
                    "resolve_model_path"},
    "twinkle.infra": {
        "DeviceGroup", "DeviceMesh", "Platform", "get_device_placement", "get_global_mesh", "get_groups",
        "get_mode", "initialize", "is_master", "remote_class", "remote_function", "seed_everything",
    },
    "twinkle.reward": {
        "Reward", "GSM8KAccuracyReward", "GSM8KFormatReward", "FormatReward", "MathReward", "completion_text",
        "last_boxed", "math_equal",
    },
    "twinkle.advantage": {"Advantage", "GRPOAdvantage", "RLOOAdvantage", "SCALES"},
    "twinkle.sampler": {"BaseSamplerEngine", "Sampler", "TorchSampler", "VLLMEngine", "vLLMSampler"},
    "twinkle.checkpoint_engine": {
        "CheckpointEngine", "CheckpointEngineManager", "CheckpointEngineMixin", "GlooCheckpointEngine",
        "HCCLCheckpointEngine", "MasterMetadata", "NCCLCheckpointEngine", "TensorMeta", "decide_backend_engine",
    },
    "twinkle.model.megatron": {"MegatronModel", "MegatronStrategy", "MultiLoraMegatronModel"},
    "twinkle.utils": {"DeviceGroup", "DeviceMesh", "Platform", "construct_class", "get_logger"},
}


def test_top_level_all_is_the_contract():
    assert set(twinkle.__all__) == TOP_LEVEL
    for name in TOP_LEVEL:
        assert getattr(twinkle, name) is not None


@pytest.mark.parametrize("module", sorted(PACKAGES))
def test_package_all(module):
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PACKAGES[module]
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_http_clients_say_they_are_not_available():
    with pytest.raises(NotImplementedError, match="twinkle-submit"):
        twinkle.init_twinkle_client()
    with pytest.raises(NotImplementedError, match="Tinker"):
        twinkle.init_tinker_client()


def test_exception_tree():
    assert issubclass(errors.ConfigError, errors.TwinkleError) and issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.UnknownComponentError, errors.ConfigError)
    assert issubclass(errors.BatchSizeError, errors.ConfigError)
    assert issubclass(errors.DataError, ValueError)
    assert issubclass(errors.DataFileNotFoundError, FileNotFoundError)
    assert issubclass(errors.SampleTooLongError, errors.DataError)
    assert issubclass(errors.TemplateError, ValueError)
    assert issubclass(errors.HubError, RuntimeError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    for name in ("TwinkleError", "ConfigError", "DataError", "TemplateError", "HubError"):
        assert name in errors.__all__ and name in errors.__doc__
