"""Server-side data objects (http.md §9.4): a dataset, dataloader, template or preprocessor living on the server.

Each class here mirrors the twinkle class of the same name: the constructor POSTs ``processor/twinkle/create``
with the keyword arguments, each method POSTs ``processor/twinkle/call`` and returns its ``result``. Arguments go
as JSON: rows and numbers as they are, ``DatasetMeta`` tagged (its ``data`` rows travel with it), other
server-side objects by their ``processor_id``. Most scripts keep data local (``twinkle.dataset``); these are for
data you want prepared next to the model, or a dataloader several clients share.
"""

from __future__ import annotations

from typing import Any

from twinkle_client.http import request, serialize

__all__ = ["InputProcessor", "RemoteObject", "Template"]


class RemoteObject:
    """One server-side object: ``processor_type`` + ``class_type`` name it; ``processor_id`` is its handle."""

    processor_type = ""
    class_type: str | None = None  # default: the client class's own name

    def __init__(self, **kwargs: Any) -> None:
        body = {"processor_type": self.processor_type, "class_type": self.class_type or type(self).__name__,
                **{k: serialize(v) for k, v in kwargs.items()}}
        self.processor_id: str = request("POST", "processor/twinkle/create", body)["processor_id"]

    def _call(self, function: str, timeout: float = 600, **kwargs: Any) -> Any:
        body = {"processor_id": self.processor_id, "function": function,
                **{k: serialize(v) for k, v in kwargs.items()}}
        answer = request("POST", "processor/twinkle/call", body, timeout=timeout)
        return answer.get("result") if isinstance(answer, dict) else answer

    def __getattr__(self, name: str) -> Any:
        # any other method of the server class, with keyword arguments
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda **kwargs: self._call(name, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.processor_id})"


class Template(RemoteObject):
    """A template on the server; ``model_id`` is the name of a model the server serves (its tokenizer)."""

    processor_type = "template"

    def __init__(self, model_id: str, **kwargs: Any) -> None:
        super().__init__(model_id=model_id, **kwargs)


class InputProcessor(RemoteObject):
    processor_type = "processor"
