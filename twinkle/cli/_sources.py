"""Where settings come from, lowest priority first: a dotenv file, the environment, a YAML file, the command line.

Each source yields ``(key, value)`` pairs; string values are cast later by ``ValueCaster``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["CLISource", "ConfigSource", "DotEnvSource", "EnvVarSource", "YamlSource"]


class ConfigSource:
    """A source of settings: ``items()`` yields ``(key, value)``; ``from_strings`` says whether values need casting."""

    from_strings = True

    def items(self) -> Iterator[tuple[str, Any]]:
        raise NotImplementedError


class DotEnvSource(ConfigSource):
    """``KEY=VALUE`` lines from ``env_file``, else ``./.env``, else ``./.env.local`` (none: nothing)."""

    def __init__(self, env_file: str | os.PathLike | None = None) -> None:
        if env_file is not None:
            self.path: Path | None = Path(env_file)
        else:
            self.path = next((Path(p) for p in (".env", ".env.local") if Path(p).is_file()), None)

    def items(self) -> Iterator[tuple[str, Any]]:
        if self.path is None or not self.path.is_file():
            return
        for line in self.path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            if line.startswith("export "):
                line = line[len("export "):]
            key, value = line.split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            key = key.strip()
            yield (key[len("TWINKLE_"):] if key.upper().startswith("TWINKLE_") else key), value


class EnvVarSource(ConfigSource):
    """Every ``TWINKLE_<KEY>`` (prefix stripped), and every bare variable named after a known field
    (torchrun's ``WORLD_SIZE`` sets ``infra.world_size``)."""

    def __init__(self, known_keys: set[str], environ: dict[str, str] | None = None) -> None:
        self.known_keys = known_keys
        self.environ = os.environ if environ is None else environ

    def items(self) -> Iterator[tuple[str, Any]]:
        prefixed = []
        for name, value in self.environ.items():
            if name.upper().startswith("TWINKLE_"):
                prefixed.append((name[len("TWINKLE_"):], value))
            elif name.lower() in self.known_keys:
                yield name, value
        yield from prefixed  # the explicit TWINKLE_ form wins over a bare variable


class YamlSource(ConfigSource):
    """A YAML file; nested keys are joined with ``_`` (``model: {model_id: x}`` -> ``model_model_id``).

    Upstream reads it with OmegaConf; ours with PyYAML (already a dependency of transformers), which gives the
    same plain mapping for the files these scripts use (no interpolation).

    Raises:
        FileNotFoundError: the file does not exist.
    """

    from_strings = False

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"config file {str(self.path)!r} not found; check --config / config_file=")

    def items(self) -> Iterator[tuple[str, Any]]:
        import yaml  # type: ignore[import-untyped]

        data = yaml.safe_load(self.path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: the top level must be a mapping of keys to values")
        yield from _flatten(data, "")


def _flatten(data: dict, prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _flatten(value, name)
        else:
            yield name, value


class CLISource(ConfigSource):
    """``--k v`` (v taken only if it does not start with ``--``), ``--k=v``, bare ``--flag`` (True),
    ``--no-k`` (False); other tokens are ignored."""

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = list(sys.argv[1:] if argv is None else argv)

    def items(self) -> Iterator[tuple[str, Any]]:
        argv, i = self.argv, 0
        while i < len(argv):
            token = argv[i]
            i += 1
            if not token.startswith("--") or token == "--":
                continue
            body = token[2:]
            if "=" in body:
                key, value = body.split("=", 1)
                yield key, value
            elif i < len(argv) and not argv[i].startswith("--"):
                yield body, argv[i]
                i += 1
            elif body.startswith("no-") or body.startswith("no_"):
                yield body[3:], False
            else:
                yield body, True

    def config_file(self) -> str | None:
        """The ``--config`` value, if any (read as a YAML source before the command line)."""
        for key, value in self.items():
            if key.replace("-", "_").lower() == "config" and isinstance(value, str):
                return value
        return None
