"""Static script inspection: read a job's DeviceGroups from its source with ``ast``; the script never runs.

Reads ``DeviceGroup(name, ranks, device_type)`` calls (``ranks`` an int or a list of ints) and
``twinkle.initialize(mode, nproc_per_node=N)``. Arguments that are not literals produce a warning and a default.

The launcher follows from what was read (``decide_launcher``): ``mode='ray'`` -> ``ray``; local mode (the default)
with more than one rank -> ``torchrun``; else ``python``. When the reader cannot tell (the mode or the ranks are
not literals) it says so in a warning naming ``--launcher``, and the job's request decides.
A bundle is a single ``.py`` file or a ``.zip`` holding the entrypoint; it is always stored as a zip.
"""

from __future__ import annotations

import ast
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from contract.archive import DEFAULT_LIMITS, ArchiveLimits, ArchiveRejected, scan
from contract.errors import ErrorCode
from scheduler.errors import InvalidRequest

# Bounds on what the reader accepts, so a hostile script costs a 422 and not the API's memory or stack.
MAX_SCRIPT_BYTES = 2 * 1024 * 1024  # the entrypoint's source; data belongs in files next to it, not in code
MAX_WARNINGS = 50
MAX_ENTRYPOINT = 512  # the jobs.entrypoint column
ARCHIVE_RULE = "the zip breaks the bundle rule"

DEFAULT_GROUP = {"name": "default", "ranks": 1, "device_type": "any", "min_memory_gb": 0.0}
KNOWN_DEVICE_TYPES = {"cuda", "gpu", "npu", "cpu", "any"}


@dataclass
class Inspection:
    device_groups: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    nproc_per_node: int | None = None
    mode: str | None = None
    launcher: str = "python"
    mode_unread: bool = False

    def request(self) -> dict[str, Any]:
        return {"device_groups": self.device_groups, "launcher": self.launcher}


@dataclass
class Bundle:
    """A validated bundle, ready to store: always a zip, with its entrypoint inside."""

    zip_bytes: bytes
    entrypoint: str
    source: str


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (RecursionError, MemoryError) as exc:  # e.g. thousands of nested unary minus signs
        raise ValueError("literal nested too deeply") from exc


def _call_name(func: ast.AST) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


class _Either(ValueError):
    """The value depends on something only known at run time, but is one of ``values``."""

    def __init__(self, values: tuple[Any, ...]):
        super().__init__("depends on the run")
        self.values = values


class _Names:
    """Module-level ``NAME = <expression>`` bindings, folded statically where that is certain.

    Folds literals, ``os.environ.get("K", "default")`` / ``os.getenv`` (the default: the platform does not read
    the job's variables into its request), ``int()``/``float()``/``str()`` of those, ``a or b``, comparisons with
    ``==``/``!=``, and ``x if cond else y`` (a condition that cannot be folded gives ``_Either`` of both
    branches, e.g. ``"cuda" if torch.cuda.is_available() else "cpu"``). Anything else stays unknown
    (``ValueError``). Names bound more than once are unknown."""

    MAX_DEPTH = 8

    def __init__(self, tree: ast.Module):
        bound: dict[str, list[ast.AST]] = {}
        for stmt in ast.walk(tree):  # every binding anywhere: a name bound twice (or in a loop) is unknown
            if isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            bound.setdefault(name.id, []).append(stmt.value)
            elif isinstance(stmt, ast.AnnAssign | ast.AugAssign | ast.For | ast.NamedExpr):
                for name in ast.walk(stmt.target):
                    if isinstance(name, ast.Name):
                        bound.setdefault(name.id, []).extend([stmt, stmt])
        self._bound = {name: nodes[0] for name, nodes in bound.items() if len(nodes) == 1}

    def value(self, node: ast.AST, depth: int = 0) -> Any:
        if depth > self.MAX_DEPTH:
            raise ValueError("too deep")
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in self._bound:
            return self.value(self._bound[node.id], depth + 1)
        if isinstance(node, ast.IfExp):
            return self._choice(node, depth)
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq | ast.NotEq):
            left, right = self.value(node.left, depth + 1), self.value(node.comparators[0], depth + 1)
            return (left == right) if isinstance(node.ops[0], ast.Eq) else (left != right)
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            for part in node.values:
                v = self.value(part, depth + 1)
                if v:
                    return v
            return v
        if isinstance(node, ast.Call) and not node.keywords:
            name = _call_name(node.func)
            if name in ("int", "float", "str") and len(node.args) == 1 and isinstance(node.func, ast.Name):
                return {"int": int, "float": float, "str": str}[name](self.value(node.args[0], depth + 1))
            if self._is_env_lookup(node.func) and node.args:
                key = self.value(node.args[0], depth + 1)
                if not isinstance(key, str):
                    raise ValueError("not a variable name")
                return self.value(node.args[1], depth + 1) if len(node.args) > 1 else None
        raise ValueError("not statically known")

    def _choice(self, node: ast.IfExp, depth: int) -> Any:
        try:
            cond = self.value(node.test, depth + 1)
        except ValueError:  # _Either too
            cond = None
        if isinstance(cond, bool):
            return self.value(node.body if cond else node.orelse, depth + 1)
        a, b = self.value(node.body, depth + 1), self.value(node.orelse, depth + 1)
        if a == b:
            return a
        raise _Either((a, b))

    @staticmethod
    def _is_env_lookup(func: ast.AST) -> bool:
        """``os.environ.get`` or ``os.getenv``."""
        if not isinstance(func, ast.Attribute):
            return False
        if func.attr == "getenv":
            return isinstance(func.value, ast.Name) and func.value.id == "os"
        return func.attr == "get" and isinstance(func.value, ast.Attribute) and func.value.attr == "environ"


def _arg(call: ast.Call, pos: int, kw: str) -> ast.AST | None:
    for k in call.keywords:
        if k.arg == kw:
            return k.value
    if len(call.args) > pos and not any(isinstance(a, ast.Starred) for a in call.args[: pos + 1]):
        return call.args[pos]
    return None


def parse_script(source: str, filename: str = "train.py") -> ast.Module:
    """Parse ``source`` within the reader's bounds.

    Raises ``InvalidRequest`` on a syntax error, a source over ``MAX_SCRIPT_BYTES`` or nesting deeper than the
    parser's stack (CPython raises ``MemoryError`` or ``RecursionError`` there, which must not become a 500).
    """
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > MAX_SCRIPT_BYTES:
        raise InvalidRequest(
            f"{filename} is {size / 1024 / 1024:.1f} MB of source; a script may be at most "
            f"{MAX_SCRIPT_BYTES // 1024 // 1024} MB (put data in files of the bundle, not in code)",
            code=ErrorCode.SCRIPT_TOO_LARGE,
            fields={"file": f"source at most {MAX_SCRIPT_BYTES} bytes"},
        )
    try:
        return ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise InvalidRequest(
            f"{filename} is not valid Python: {exc.msg} at line {exc.lineno}",
            code=ErrorCode.NOT_PYTHON,
            fields={"file": f"line {exc.lineno}: {exc.msg}"},
        ) from exc
    except (MemoryError, RecursionError) as exc:
        raise InvalidRequest(
            f"{filename} nests expressions too deeply for the script reader; flatten the nesting",
            code=ErrorCode.SCRIPT_TOO_COMPLEX,
            fields={"file": "expressions nested too deeply"},
        ) from exc


def inspect_source(source: str, filename: str = "train.py") -> Inspection:
    """Parse ``source`` (``parse_script``: raises ``InvalidRequest``) and read its resource request."""
    tree = parse_script(source, filename)
    constants = _Names(tree)
    groups: list[dict[str, Any]] = []
    warnings: list[str] = []
    nproc: int | None = None
    mode: str | None = None
    mode_unread = ranks_unread = False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node.func)
        if name == "DeviceGroup":
            before = len(warnings)
            groups.append(_read_group(node, filename, len(groups), warnings, constants))
            ranks_unread = ranks_unread or any("ranks" in w for w in warnings[before:])
        elif name == "initialize":
            n = _arg(node, 1, "nproc_per_node")
            if n is not None:
                try:
                    nproc = int(_folded(n, constants))
                except (ValueError, TypeError, SyntaxError):
                    warnings.append(f"{filename}:{node.lineno}: nproc_per_node is not a literal int; ignored")
            m = _arg(node, 0, "mode")
            if m is not None:
                try:
                    value = _folded(m, constants)  # a module constant (MODE = os.environ.get(..., "local")) too
                    mode = None if value is None else str(value)
                except (ValueError, TypeError, SyntaxError):
                    mode, mode_unread = None, True

    if len(warnings) > MAX_WARNINGS:
        warnings[MAX_WARNINGS:] = [f"... and {len(warnings) - MAX_WARNINGS} more warnings"]
    if not groups:
        groups = [dict(DEFAULT_GROUP)]
        warnings.append(
            "no DeviceGroup(...) found; requesting 1 rank of any device type "
            "(pass a request with device_groups to pin it)"
        )
    if nproc is not None:
        for g in groups:
            if g["ranks"] > nproc:
                warnings.append(
                    f"DeviceGroup {g['name']!r} wants {g['ranks']} ranks but nproc_per_node={nproc}; "
                    "a worker is one machine, so the group must fit on one node"
                )
    names = [g["name"] for g in groups]
    if len(set(names)) != len(names):
        warnings.append(f"DeviceGroup names repeat ({', '.join(names)}); each group is matched separately")
    launcher = decide_launcher(mode, groups, mode_unread=mode_unread, ranks_unread=ranks_unread, warnings=warnings)
    return Inspection(
        device_groups=groups, warnings=warnings, nproc_per_node=nproc, mode=mode, launcher=launcher,
        mode_unread=mode_unread,
    )


LAUNCHER_HINT = "pass --launcher torchrun|python|ray (API: request.launcher or the launcher form field) to choose"


def decide_launcher(
    mode: str | None, groups: list[dict[str, Any]], *, mode_unread: bool, ranks_unread: bool, warnings: list[str]
) -> str:
    """``ray`` for Ray mode; ``torchrun`` for local mode with more than one rank; ``python`` otherwise. A warning
    says when the script left it undecidable."""
    def warn(text: str) -> str:
        if text not in warnings:
            warnings.append(text)
        return "python"

    if mode_unread:
        return warn(f"twinkle.initialize(mode=...) is not a literal; launching with python; {LAUNCHER_HINT}")
    if mode == "ray":
        return "ray"
    if mode not in (None, "local"):
        return warn(f"unknown twinkle mode {mode!r}; launching with python; {LAUNCHER_HINT}")
    if ranks_unread:
        return warn(f"the ranks of a DeviceGroup are not a literal; launching with python; {LAUNCHER_HINT}")
    return "torchrun" if sum(int(g.get("ranks", 1)) for g in groups) > 1 else "python"


def _folded(node: ast.AST, names: _Names | None) -> Any:
    """A literal, or a module-level name folded by ``_Names`` (raises ``ValueError``/``_Either`` otherwise)."""
    try:
        return _literal(node)
    except (ValueError, TypeError, SyntaxError):
        if names is None:
            raise
    try:
        return names.value(node)
    except (TypeError, RecursionError) as exc:
        raise ValueError(str(exc)) from exc


def _read_group(
    call: ast.Call, filename: str, index: int, warnings: list[str], names: _Names | None = None
) -> dict[str, Any]:
    where = f"{filename}:{call.lineno}"
    group: dict[str, Any] = dict(DEFAULT_GROUP)
    group["name"] = f"group{index}" if index else "default"

    node = _arg(call, 0, "name")
    if node is not None:
        try:
            group["name"] = str(_literal(node))
        except (ValueError, TypeError, SyntaxError):
            warnings.append(f"{where}: DeviceGroup name is not a literal; using {group['name']!r}")

    node = _arg(call, 1, "ranks")
    if node is None:
        warnings.append(f"{where}: DeviceGroup has no ranks; assuming 1")
    else:
        try:
            ranks = _folded(node, names)
            if isinstance(ranks, bool):
                raise TypeError
            if isinstance(ranks, int):
                group["ranks"] = ranks
            elif isinstance(ranks, (list, tuple)) and all(isinstance(r, int) for r in ranks):
                group["ranks"] = len(ranks)
            else:
                raise TypeError
            if group["ranks"] < 1:
                raise TypeError
        except (ValueError, TypeError, SyntaxError):
            group["ranks"] = 1
            warnings.append(f"{where}: DeviceGroup ranks is not a literal int or list of ints; assuming 1")

    node = _arg(call, 2, "device_type")
    if node is None:
        group["device_type"] = "cuda"  # twinkle's DeviceGroup is a GPU group unless told otherwise
    else:
        try:
            try:
                value = str(_folded(node, names))
            except _Either as either:
                # chosen at run time among known types ("cuda" if available else "cpu"): any of them will do
                if not all(isinstance(v, str) and v.lower() in KNOWN_DEVICE_TYPES for v in either.values):
                    raise
                value = "any"
            if value.lower() not in KNOWN_DEVICE_TYPES:
                warnings.append(f"{where}: unknown device_type {value!r}; it only matches workers offering it")
            group["device_type"] = value
        except (ValueError, TypeError, SyntaxError):
            group["device_type"] = "any"
            warnings.append(
                f"{where}: DeviceGroup device_type is not a literal; matching any device type "
                "(pass a request with device_type to pin it)"
            )
    return group


def _zip_single(filename: str, source: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(filename, source)
    return buf.getvalue()


def read_bundle(
    filename: str, data: bytes, entrypoint: str | None, limits: ArchiveLimits = DEFAULT_LIMITS
) -> tuple[Bundle | None, list[tuple[str, str]]]:
    """Validate an upload and turn it into a zip bundle. Returns (bundle, problems as (field, message)).

    A zip is checked against ``limits`` (``contract.archive``, the rules the worker unpacks by) and inflated
    once, chunk by chunk, to prove it: CPU-bound, so callers run this in a worker thread.
    """
    problems: list[tuple[str, str]] = []
    lower = filename.lower()
    if entrypoint is not None and len(entrypoint) > MAX_ENTRYPOINT:
        problems.append(("entrypoint", f"entrypoint is {len(entrypoint)} characters; at most {MAX_ENTRYPOINT}"))
        return None, problems
    if lower.endswith(".py"):
        name = PurePosixPath(filename.replace("\\", "/")).name
        if len(name) > MAX_ENTRYPOINT:
            problems.append(("file", f"the file name is {len(name)} characters; at most {MAX_ENTRYPOINT}"))
        if entrypoint and entrypoint != name:
            problems.append(("entrypoint", f"entrypoint {entrypoint!r} differs from the uploaded file {name!r}"))
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(("file", f"{name} is not UTF-8 text (byte {exc.start}); upload a Python script"))
            return None, problems
        if problems:
            return None, problems
        return Bundle(_zip_single(name, data), name, source), problems
    if lower.endswith(".zip"):
        try:
            names = scan(io.BytesIO(data), limits)
            rejected = False
        except ArchiveRejected as exc:
            problems.append(("file", f"{ARCHIVE_RULE} {exc.rule}: {exc.message}"))
            rejected = True
            try:  # report a missing entrypoint too, when the directory is readable: every problem at once
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    names = zf.namelist()
            except (zipfile.BadZipFile, OSError, ValueError, EOFError):
                return None, problems
        entry = entrypoint or "train.py"
        if entry not in names:
            py_files = sorted(n for n in names if n.endswith(".py"))
            hint = f"; it holds {', '.join(py_files[:10])}" if py_files else "; it holds no .py file"
            problems.append(("entrypoint", f"the zip has no {entry!r} at its top level{hint}; pass entrypoint="))
        if rejected or problems:
            return None, problems
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            raw = zf.read(entry)  # within the limits: scan() inflated every member already
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(("entrypoint", f"{entry} in the zip is not UTF-8 text"))
            return None, problems
        return Bundle(data, entry, source), problems
    problems.append(("file", f"{filename[:200]!r} is neither a .py script nor a .zip bundle"))
    return None, problems
