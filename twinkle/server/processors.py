"""Server-side data objects (http.md §7): a tenant's datasets, dataloaders, templates, preprocessors, processors.

``create {processor_type, class_type, **kwargs}`` builds ``twinkle.<processor_type>.<class_type>(**kwargs)`` and
answers ``{processor_id: "pid:<hex>"}``; ``call {processor_id, function, **kwargs}`` runs one of its methods and
answers ``{result}``. An object belongs to the tenant and session that made it; another tenant's id is "not found".

Ours, because the objects run inside the server with the server's files and CPUs:

- only named parameters are accepted: the ``**load_kw`` / ``**hf_kw`` / ``**torch_kw`` pass-throughs (cache
  files, ``num_proc``, ``num_workers``, ``data_files``) are refused with the names that are accepted;
- a ``DatasetMeta`` reads data the caller sends (``data=rows``) or a hub id (``ms://``/``hf://``), never a server
  path; ``save_as`` (writes a server path) is not callable;
- a template's ``model_id`` must name a model this server serves (its tokenizer is used); preprocessors and
  processors are found by registered name only, so no code is imported by name;
- at most ``per_user_processor_limit`` objects per tenant (429), dropped after ``processor_timeout`` seconds unused
  or when their session ends.
"""

from __future__ import annotations

import importlib
import inspect
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twinkle.server.errors import LimitError, NotFound, UserError
from twinkle.server.state import Sessions
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.server")

__all__ = ["ProcessorService"]

# processor_type -> (module, the base class its class_type must derive from, by name in that module)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dataset": ("twinkle.dataset", ("Dataset", "IterableDataset")),
    "dataloader": ("twinkle.dataloader", ("DataLoader",)),
    "template": ("twinkle.template", ("Template",)),
    "preprocessor": ("twinkle.preprocessor", ("Preprocessor", "DataFilter")),
    "processor": ("twinkle.processor", ("InputProcessor",)),
}
DUNDERS = ("__len__", "__getitem__", "__iter__", "__next__")
NOT_CALLABLE = {"save_as": "it writes a file on the server; fetch rows with __getitem__ or a DataLoader instead"}
DROPPED = ("remote_group", "device_mesh")  # the server decides placement
REFUSED = {"packing_num_proc": "it starts processes on the server"}
MAX_SLICE = 10_000_000  # rows a data_slice may name (each costs memory before any data is read)


@dataclass
class _Object:
    pid: str
    tenant: str
    session_id: str
    kind: str
    obj: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    iterator: Iterator[Any] | None = None
    last_used: float = field(default_factory=time.time)


class ProcessorService:
    def __init__(self, sessions: Sessions, models: dict[str, str], *, per_tenant_limit: int = 20,
                 timeout: float = 1800) -> None:
        """``models``: served model name -> its path or hub id (what a template's ``model_id`` may name)."""
        self.sessions = sessions
        self.models = models
        self.per_tenant_limit = per_tenant_limit
        self.timeout = timeout
        self._lock = threading.Lock()
        self._items: dict[str, _Object] = {}

    # ------------------------------------------------------------------ lifecycle

    def sweep(self) -> list[str]:
        """Drop objects unused for ``timeout`` seconds or whose session is gone."""
        now = time.time()
        with self._lock:
            gone = [pid for pid, o in self._items.items()
                    if now - o.last_used >= self.timeout or self.sessions.silent_for(o.session_id) is None]
            for pid in gone:
                del self._items[pid]
        if gone:
            logger.info("dropped %d unused processor objects", len(gone))
        return gone

    def owned(self, pid: Any, tenant: str) -> _Object:
        with self._lock:
            record = self._items.get(str(pid))
        if record is None or record.tenant != tenant:
            raise NotFound(f"processor {pid} not found (it expired after {self.timeout:.0f}s unused, its session "
                           f"ended, the server restarted, or it is not yours); create it again")
        record.last_used = time.time()
        return record

    def count(self) -> int:
        with self._lock:
            return len(self._items)

    # ------------------------------------------------------------------ create / call

    def create(self, tenant: str, session_id: str | None, processor_type: str, class_type: str,
               kwargs: dict[str, Any]) -> str:
        self.sweep()
        if self.sessions.get(session_id, tenant) is None:
            raise NotFound("Unknown session: create one (init_twinkle_client) and send it as X-Twinkle-Session-Id")
        cls = self._class(processor_type, class_type)
        for key in DROPPED:
            kwargs.pop(key, None)
        kwargs = {k: self._value(v, tenant, k) for k, v in kwargs.items()}
        if processor_type == "template":
            kwargs = self._template_kwargs(cls, kwargs)
        if processor_type == "dataloader" and not hasattr(kwargs.get("dataset"), "__getitem__") \
                and not hasattr(kwargs.get("dataset"), "__iter__"):
            raise UserError(400, "a server-side DataLoader takes dataset=<the processor_id of a dataset>")
        self._check_params(f"{class_type}(...)", _init(cls), kwargs)
        with self._lock:
            held = sum(1 for o in self._items.values() if o.tenant == tenant)
            if self.per_tenant_limit and held >= self.per_tenant_limit:
                raise LimitError(f"Processor limit exceeded: {held}/{self.per_tenant_limit} objects for this token; "
                                 f"they are dropped after {self.timeout:.0f}s unused")
        obj = cls(**kwargs)
        pid = f"pid:{uuid.uuid4().hex}"
        with self._lock:
            self._items[pid] = _Object(pid, tenant, str(session_id), processor_type, obj)
        return pid

    def call(self, tenant: str, pid: str, function: str, kwargs: dict[str, Any]) -> Any:
        """Run ``function`` on the object (one call at a time per object); raises StopIteration when exhausted."""
        record = self.owned(pid, tenant)
        method = self._method(record, function)
        kwargs = {k: self._value(v, tenant, k) for k, v in kwargs.items()}
        if function == "set_template":
            template = kwargs.get("template", "Template")
            cls = self._class("template", template) if isinstance(template, str) else type(template)
            rest = self._template_kwargs(cls, {k: v for k, v in kwargs.items() if k != "template"})
            kwargs = {"template": template, **rest}
        elif function == "set_processor":
            processor = kwargs.get("processor", "InputProcessor")
            cls = self._class("processor", processor) if isinstance(processor, str) else type(processor)
            self._check_params("set_processor(...)", _init(cls), {k: v for k, v in kwargs.items()
                                                                    if k != "processor"})
        elif function in ("map", "filter"):
            self._check_func(function, kwargs)
        if function not in ("set_template", "set_processor"):
            self._check_params(f"{function}(...)", method, kwargs)
        with record.lock:
            if function == "__iter__":
                record.iterator = iter(record.obj)
                return "ok"
            if function == "__next__":
                if record.iterator is None:
                    record.iterator = iter(record.obj)
                return next(record.iterator)
            return method(**kwargs)

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _class(processor_type: str, class_type: Any) -> type:
        if processor_type not in KINDS:
            raise UserError(400, f"processor_type {processor_type!r} is not served; use one of {sorted(KINDS)}")
        module_name, bases = KINDS[processor_type]
        module = importlib.import_module(module_name)
        base_classes = tuple(getattr(module, b) for b in bases)
        exported = getattr(module, "__all__", [])
        cls = getattr(module, str(class_type), None) if class_type in exported else None
        if not (inspect.isclass(cls) and issubclass(cls, base_classes)):
            known = sorted(n for n in exported if inspect.isclass(getattr(module, n))
                           and issubclass(getattr(module, n), base_classes))
            raise UserError(400, f"unknown {processor_type} class {class_type!r}; known: {', '.join(known)}")
        return cls

    @staticmethod
    def _check_params(what: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        params = inspect.signature(fn).parameters
        named = [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for key in kwargs:
            if key in REFUSED:
                raise UserError(400, f"{what}: {key} is not accepted on the server ({REFUSED[key]})")
        unknown = sorted(k for k in kwargs if k not in named)
        if unknown:
            raise UserError(400, f"{what} takes no argument(s) {unknown} on the server (pass-through keywords are "
                                 f"refused there); it takes {named}")

    def _method(self, record: _Object, function: str) -> Callable[..., Any]:
        if function in NOT_CALLABLE:
            raise UserError(400, f"{function} cannot be called on a server-side object: {NOT_CALLABLE[function]}")
        if function in ("__iter__", "__next__"):
            return lambda: None  # handled in call()
        method = getattr(record.obj, function, None) if isinstance(function, str) else None
        if method is None or not (function in DUNDERS or hasattr(method, "_twinkle_remote")):
            public = sorted(n for n in dir(record.obj) if hasattr(getattr(type(record.obj), n, None), "_twinkle_remote")
                            and n not in NOT_CALLABLE)
            raise UserError(400, f"{type(record.obj).__name__} has no callable {function!r}; call one of "
                                 f"{public + [d for d in DUNDERS if hasattr(record.obj, d)]}")
        return method

    @staticmethod
    def _check_func(function: str, kwargs: dict[str, Any]) -> None:
        # map: a preprocessor by registered name or a server-side Preprocessor; filter: a server-side DataFilter
        from twinkle.preprocessor import DataFilter, Preprocessor

        func = kwargs.get("func")
        if function == "map" and not isinstance(func, (str, Preprocessor)):
            raise UserError(400, "map on the server takes a preprocessor name (with init_args) or the processor_id "
                                 "of a preprocessor; functions cannot be sent")
        if function == "filter" and not isinstance(func, DataFilter):
            raise UserError(400, "filter on the server takes the processor_id of a DataFilter (create it with "
                                 "processor_type='preprocessor')")

    def _template_kwargs(self, cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
        model = str(kwargs.get("model_id") or "").split("://", 1)[-1]
        if model not in self.models:
            raise UserError(400, f"a template's model_id must be a model served here ({sorted(self.models)}), "
                                 f"got {kwargs.get('model_id')!r}")
        kwargs = {**kwargs, "model_id": self.models[model]}
        self._check_params(f"{cls.__name__}(...)", _init(cls), kwargs)
        return kwargs

    def _value(self, value: Any, tenant: str, name: str) -> Any:
        """``pid:`` strings become the caller's objects; a tagged ``DatasetMeta`` is rebuilt and checked."""
        if isinstance(value, str) and value.startswith("pid:"):
            return self.owned(value, tenant).obj
        if isinstance(value, str) and value.startswith("{") and "_TWINKLE_TYPE_" in value:
            try:
                data = json.loads(value)
            except ValueError as exc:
                raise UserError(400, f"{name}: a tagged value that is not JSON ({exc})") from exc
            if data.pop("_TWINKLE_TYPE_", None) != "DatasetMeta":
                raise UserError(400, f"{name}: this route rebuilds DatasetMeta only")
            return dataset_meta(data)
        return value


def _init(cls: type) -> Callable[..., Any]:
    return cls.__init__  # type: ignore[misc]  # the class's own constructor, for its parameter names


def dataset_meta(data: dict[str, Any]) -> Any:
    """A ``DatasetMeta`` from its wire form (http.md §9.6); server paths are refused."""
    from twinkle.dataset import DatasetMeta

    known = {"dataset_id", "subset_name", "split", "data_slice", "data"}
    if set(data) - known:
        raise UserError(400, f"DatasetMeta has no field(s) {sorted(set(data) - known)}")
    source = str(data.get("dataset_id") or "")
    if source and not source.startswith(("ms://", "hf://")):
        raise UserError(400, f"a server-side dataset reads a hub id (ms://org/name or hf://org/name) or the rows "
                             f"you send (DatasetMeta(data=[...])), never a path on the server; got {source!r}")
    if data.get("data") is not None and not isinstance(data["data"], (list, dict)):
        raise UserError(400, "DatasetMeta.data must be a list of rows or a dict of columns")
    spec = data.get("data_slice")
    if isinstance(spec, dict):
        try:
            if spec.get("_slice_type_") == "range":
                data["data_slice"] = range(int(spec.get("start", 0)), int(spec["stop"]), int(spec.get("step", 1)))
            elif spec.get("_slice_type_") == "list":
                data["data_slice"] = [int(i) for i in spec["values"]]
            else:
                raise KeyError("_slice_type_")
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(400, "data_slice must be {_slice_type_: range, start, stop, step} or {_slice_type_: "
                                 f"list, values}} ({exc})") from exc
        if len(data["data_slice"]) > MAX_SLICE:
            raise UserError(400, f"data_slice names {len(data['data_slice'])} rows; at most {MAX_SLICE} here")
    elif spec is not None:
        raise UserError(400, "data_slice must be sent tagged (the client does this for range and list)")
    try:
        return DatasetMeta(**data)
    except (TypeError, ValueError) as exc:
        raise UserError(400, f"bad DatasetMeta: {exc}") from exc
