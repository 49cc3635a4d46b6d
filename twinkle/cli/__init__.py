"""``twinkle.cli``: upstream's config system. A script reads its settings with ``args = CLI.from_args()``.

Sources, later ones winning: the dataclass defaults; a dotenv file (``env_file``, else ``./.env``, else
``./.env.local``); the environment (``TWINKLE_<KEY>``, and bare variables named after a field such as
``WORLD_SIZE``); a YAML file (``config_file`` or ``--config``); the command line (``--model-id X --lr 1e-4``).

>>> args = CLI.from_args(['--model-id', 'Qwen/Qwen3-0.6B', '--fsdp-size', '2', '--lr', '1e-4', '--model-name', 'x'])
>>> args.model.model_id, args.infra.fsdp_size, args.optimizer.learning_rate, args.extra['model_name']
('Qwen/Qwen3-0.6B', 2, 0.0001, 'x')

Upstream quirks kept (so scripts behave the same) and worth knowing: any comma turns a string into a list;
``--no-fused-ce`` lands in ``extra`` (the flag that works is ``--no-enable-fused-ce``); ``--use-megatron true``
selects ``strategy='native_fsdp'``.
"""

from __future__ import annotations

import os

from twinkle.cli._args import (
    Args,
    CheckpointArgs,
    DatasetArgs,
    InfraArgs,
    LoraArgs,
    LossArgs,
    ModelArgs,
    OptimizerArgs,
    RLArgs,
    SamplerArgs,
    SamplingArgs,
    SchedulerArgs,
    ServerArgs,
    TemplateArgs,
    TrainingArgs,
)
from twinkle.cli._resolve import ConfigResolver, ValueCaster
from twinkle.cli._sources import CLISource, ConfigSource, DotEnvSource, EnvVarSource, YamlSource

__all__ = [
    "CLI",
    "Args",
    "CLISource",
    "CheckpointArgs",
    "ConfigResolver",
    "ConfigSource",
    "DatasetArgs",
    "DotEnvSource",
    "EnvVarSource",
    "InfraArgs",
    "LoraArgs",
    "LossArgs",
    "ModelArgs",
    "OptimizerArgs",
    "RLArgs",
    "SamplerArgs",
    "SamplingArgs",
    "SchedulerArgs",
    "ServerArgs",
    "TemplateArgs",
    "TrainingArgs",
    "ValueCaster",
    "YamlSource",
]


class CLI:
    """Build an ``Args`` from every source."""

    @staticmethod
    def from_args(
        argv: list[str] | None = None,
        env_file: str | os.PathLike | None = None,
        config_file: str | os.PathLike | None = None,
        environ: dict[str, str] | None = None,
    ) -> Args:
        """Resolve the settings; ``argv`` defaults to ``sys.argv[1:]``, ``environ`` to ``os.environ``.

        Raises:
            FileNotFoundError: ``config_file`` / ``--config`` names a missing file.
        """
        args = Args()
        resolver = ConfigResolver()
        cli = CLISource(argv)
        sources: list[ConfigSource] = [DotEnvSource(env_file), EnvVarSource(resolver.known_keys(), environ)]
        yaml_path = config_file or cli.config_file()
        if yaml_path:
            sources.append(YamlSource(yaml_path))
        sources.append(cli)
        for source in sources:
            for key, value in source.items():
                resolver.apply(args, key, value, from_string=source.from_strings and isinstance(value, str))
        return args
