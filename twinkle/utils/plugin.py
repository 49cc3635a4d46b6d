"""``Plugin.load_plugin``: a component class from a hub repo's ``__init__.py`` (remote code, opt-out-able)."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

__all__ = ["Plugin"]


class Plugin:
    @staticmethod
    def load_plugin(plugin_id: str, base: type) -> type:
        """Download ``ms://org/repo`` or ``hf://org/repo``, import its ``__init__.py`` and return the first class
        there that subclasses ``base``.

        Raises:
            ValueError: another id form, remote code not trusted (``TWINKLE_TRUST_REMOTE_CODE=0``), or no such class.
        """
        from twinkle.utils.misc import trust_remote_code

        if not plugin_id.startswith(("ms://", "hf://")):
            raise ValueError(f"plugin id {plugin_id!r} must start with ms:// or hf://")
        if not trust_remote_code():
            raise ValueError(
                f"loading plugin {plugin_id!r} runs remote code, which TWINKLE_TRUST_REMOTE_CODE=0 forbids"
            )
        from twinkle.hub import download_model

        folder = Path(download_model(plugin_id))
        init = folder / "__init__.py"
        if not init.is_file():
            raise ValueError(f"plugin {plugin_id!r} has no __init__.py at its root")
        name = "twinkle_plugin_" + plugin_id.replace("://", "_").replace("/", "_").replace("-", "_")
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
        if spec is None or spec.loader is None:
            raise ValueError(f"plugin {plugin_id!r}: cannot import {init}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, base) and obj is not base:
                return obj
        raise ValueError(f"plugin {plugin_id!r} defines no subclass of {base.__name__}")
