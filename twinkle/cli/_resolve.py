"""Matching keys to fields (``ConfigResolver``) and string values to types (``ValueCaster``)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar

from twinkle.cli._args import GROUPS, Args

__all__ = ["ConfigResolver", "ValueCaster"]

_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}
_NONE = {"none", "null", "~"}


class ValueCaster:
    """Cast a string from the environment, a dotenv file or the command line.

    ``auto``: true/yes/on and false/no/off -> bool, none/null/~ -> None, else int, else float, else a comma list
    (upstream's quirk: *any* comma makes a list), else the str. ``coerce``: when the field already holds a value,
    the result is converted to that value's type (bool, ``int(float(s))``, float, comma-split list); a failed
    conversion keeps the value.
    """

    @staticmethod
    def auto(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        if low in _NONE:
            return None
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        if "," in value:
            return [ValueCaster.auto(part.strip()) for part in value.split(",")]
        return value

    @staticmethod
    def coerce(value: Any, current: Any) -> Any:
        if current is None or value is None:
            return value
        try:
            if isinstance(current, bool):
                if isinstance(value, str):
                    return value.strip().lower() in _TRUE
                return bool(value)
            if isinstance(current, int):
                return int(float(value)) if isinstance(value, str) else int(value)
            if isinstance(current, float):
                return float(value)
            if isinstance(current, list):
                return value if isinstance(value, list) else [v.strip() for v in str(value).split(",")]
            if isinstance(current, str) and isinstance(value, list):
                return value  # a comma list stays a list (upstream's quirk)
            if isinstance(current, str):
                return str(value)
        except (TypeError, ValueError):
            return value
        return value


class ConfigResolver:
    """Route a key (case-insensitive, ``-`` as ``_``) to a field: alias, then a field name, then
    ``<group>_<field>``; unresolved keys go to ``args.extra``.

    Aliases: ``lr`` -> learning_rate, ``num_gpus`` -> nproc_per_node, ``max_new_tokens`` -> max_tokens; a truthy
    ``use_megatron`` sets ``model.strategy='native_fsdp'`` (upstream's behaviour, kept as is). Shared names:
    ``model_id`` goes to ``model``, ``seed`` to ``training``.
    """

    ALIASES: ClassVar[dict[str, str]] = {
        "lr": "learning_rate", "num_gpus": "nproc_per_node", "max_new_tokens": "max_tokens",
    }
    SHARED: ClassVar[dict[str, str]] = {"model_id": "model", "seed": "training"}

    def __init__(self) -> None:
        self.field_owner: dict[str, str] = {}
        self.qualified: dict[str, tuple[str, str]] = {}
        for group, cls in GROUPS.items():
            for f in fields(cls):
                self.field_owner.setdefault(f.name, group)
                self.qualified[f"{group}_{f.name}"] = (group, f.name)
        self.field_owner.update(self.SHARED)

    def known_keys(self) -> set[str]:
        return set(self.field_owner) | set(self.qualified) | set(self.ALIASES) | {"use_megatron"}

    def resolve(self, key: str) -> tuple[str, str] | None:
        name = key.strip().replace("-", "_").lower()
        name = self.ALIASES.get(name, name)
        if name in self.field_owner:
            return self.field_owner[name], name
        return self.qualified.get(name)

    def apply(self, args: Args, key: str, value: Any, from_string: bool) -> None:
        name = key.strip().replace("-", "_").lower()
        if from_string:
            value = ValueCaster.auto(value)
        if name == "use_megatron":
            if value:
                args.model.strategy = "native_fsdp"
            return
        target = self.resolve(name)
        if target is None:
            args.extra[name] = value
            return
        group, field_name = target
        obj = getattr(args, group)
        current = getattr(obj, field_name)
        setattr(obj, field_name, ValueCaster.coerce(value, current) if from_string else value)
