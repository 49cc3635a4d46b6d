"""Find a component by class, instance or registered name, the way upstream's ``construct_class`` does."""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, TypeVar

from twinkle.errors import UnknownComponentError

T = TypeVar("T")


def known_names(module: ModuleType, base: type) -> list[str]:
    """The names in ``module.__all__`` (or its attributes) that are subclasses of ``base``."""
    names = getattr(module, "__all__", None) or dir(module)
    return sorted(
        n for n in names if inspect.isclass(getattr(module, n, None)) and issubclass(getattr(module, n), base)
    )


def construct_class(obj: Any, base: type[T], module: ModuleType, *, kind: str | None = None, **kwargs: Any) -> T:
    """Return an instance of ``base`` from an instance (used as is), a class, or a name in ``module``.

    Raises:
        UnknownComponentError: ``obj`` is a name that ``module`` does not export as a ``base`` subclass
            (the message lists the known names), or a class that does not derive from ``base``.
    """
    kind = kind or base.__name__
    if isinstance(obj, base):
        return obj
    if inspect.isclass(obj):
        if not issubclass(obj, base):
            raise UnknownComponentError(f"{obj.__name__} is not a {kind}; pass a subclass of {base.__name__}")
        return obj(**kwargs)
    if isinstance(obj, str):
        cls = getattr(module, obj, None)
        if inspect.isclass(cls) and issubclass(cls, base):
            return cls(**kwargs)
        if obj.startswith(("ms://", "hf://")):
            raise UnknownComponentError(
                f"{kind} plugins from a hub ({obj!r}) are not supported; use one of: "
                f"{', '.join(known_names(module, base))}, or pass your own {base.__name__} subclass"
            )
        raise UnknownComponentError(
            f"unknown {kind} {obj!r}; known names: {', '.join(known_names(module, base))} "
            f"(or pass a {base.__name__} subclass or instance)"
        )
    raise UnknownComponentError(f"cannot make a {kind} from {obj!r}; pass a name, a class or an instance")
