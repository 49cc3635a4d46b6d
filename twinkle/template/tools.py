"""Tool-call parsers: find tool calls in generated text (``parse``) and strip their markup (``clean``).

``ToolCallRegistry`` keeps them in order (Hermes/Qwen, Cline, VCP, ReAct); ``Template.parse_tool_call(text)``
uses the first whose ``detect`` matches. ``arguments`` of a parsed call is always a dict.
"""

from __future__ import annotations

import json
import re
import uuid
from abc import ABC, abstractmethod
from typing import Any, ClassVar

__all__ = ["ClineParser", "HermesQwenParser", "ReActParser", "ToolCallParser", "ToolCallRegistry", "VCPParser"]


def _call(name: str, arguments: dict) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name,
                                                                                     "arguments": arguments}}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value.strip()


class ToolCallParser(ABC):
    name: ClassVar[str] = ""
    open_marker: ClassVar[str] = ""
    close_marker: ClassVar[str] = ""

    def detect(self, text: str) -> bool:
        return bool(self.open_marker) and self.open_marker in text

    @abstractmethod
    def parse(self, text: str) -> list[dict[str, Any]]:
        """The tool calls in ``text`` (``[]`` when none)."""

    def clean(self, text: str) -> str:
        """``text`` without the tool-call markup, right-stripped."""
        return text.rstrip()

    def extract_tool_result(self, text: str) -> str | None:
        return None


class HermesQwenParser(ToolCallParser):
    """``<tool_call>...</tool_call>`` blocks (the last may be unclosed) holding JSON ``{"name", "arguments"}`` or
    Qwen's ``<function=N><parameter=K>V</parameter></function>``."""

    name = "hermes_qwen"
    open_marker = "<tool_call>"
    close_marker = "</tool_call>"
    _BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
    _FUNC = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.DOTALL)
    _PARAM = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.DOTALL)

    def parse(self, text: str) -> list[dict[str, Any]]:
        calls = []
        for block in self._BLOCK.findall(text):
            func = self._FUNC.search(block)
            if func:
                args = {k: _json_or_text(v.strip()) for k, v in self._PARAM.findall(func.group(2))}
                calls.append(_call(func.group(1), args))
                continue
            try:
                data = json.loads(block.strip())
            except json.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            name = data.get("name") or data.get("tool_name")
            if not name:
                continue
            args = data.get("arguments", {})
            if isinstance(args, str):
                args = _json_or_text(args)
            calls.append(_call(name, args if isinstance(args, dict) else {"input": args}))
        return calls

    def clean(self, text: str) -> str:
        return self._BLOCK.sub("", text).rstrip()


_CLINE_DENY = {"think", "thinking", "answer", "tool_call", "function", "parameter", "system", "user", "assistant",
               "tool", "content", "role", "div", "span", "p", "a", "b", "i", "br", "code", "pre", "html", "body",
               "ul", "ol", "li", "table", "tr", "td", "img", "result", "response"}


class ClineParser(ToolCallParser):
    """Cline's XML form ``<tool_name><key>value</key>...</tool_name>`` (snake_case tag, not on the deny list, with
    at least one child)."""

    name = "cline"
    _TAG = re.compile(r"<([a-z][a-z0-9_]*)>(.*?)</\1>", re.DOTALL)
    _CHILD = re.compile(r"<([a-z][a-z0-9_]*)>(.*?)</\1>", re.DOTALL)
    _RESULT = re.compile(r"^\[tool for '[^']*'\] Result:\s*", re.MULTILINE)

    def _blocks(self, text: str):
        for match in self._TAG.finditer(text):
            tag, body = match.group(1), match.group(2)
            if tag in _CLINE_DENY:
                continue
            children = self._CHILD.findall(body)
            if children:
                yield match, tag, children

    def detect(self, text: str) -> bool:
        return any(True for _ in self._blocks(text))

    def parse(self, text: str) -> list[dict[str, Any]]:
        return [_call(tag, {k: v.strip() for k, v in children}) for _, tag, children in self._blocks(text)]

    def clean(self, text: str) -> str:
        for match, _, _ in reversed(list(self._blocks(text))):
            text = text[: match.start()] + text[match.end():]
        return text.rstrip()

    def extract_tool_result(self, text: str) -> str | None:
        return self._RESULT.sub("", text) if self._RESULT.search(text) else None


class VCPParser(ToolCallParser):
    """``<<<[TOOL_REQUEST]>>> key:「始」value「末」 ... <<<[END_TOOL_REQUEST]>>>`` (or the ``「始ESCAPE」`` form);
    the name comes from ``tool_name``."""

    name = "vcp"
    open_marker = "<<<[TOOL_REQUEST]>>>"
    close_marker = "<<<[END_TOOL_REQUEST]>>>"
    _BLOCK = re.compile(r"<<<\[TOOL_REQUEST\]>>>(.*?)<<<\[END_TOOL_REQUEST\]>>>", re.DOTALL)
    _PAIR = re.compile(r"([\w\-]+)\s*:\s*(?:「始ESCAPE」(.*?)「末ESCAPE」|「始」(.*?)「末」)", re.DOTALL)

    def parse(self, text: str) -> list[dict[str, Any]]:
        calls = []
        for block in self._BLOCK.findall(text):
            values = {k: escaped if escaped else plain for k, escaped, plain in self._PAIR.findall(block)}
            name = values.pop("tool_name", "").strip()
            if name:
                calls.append(_call(name, values))
        return calls

    def clean(self, text: str) -> str:
        return self._BLOCK.sub("", text).rstrip()


class ReActParser(ToolCallParser):
    """ReAct lines ``Action: name[args]`` -> ``arguments={'input': args}``."""

    name = "react"
    open_marker = "Action:"
    _LINE = re.compile(r"^\s*Action:\s*([\w\-.]+)\[(.*)\]\s*$", re.MULTILINE)

    def detect(self, text: str) -> bool:
        return bool(self._LINE.search(text))

    def parse(self, text: str) -> list[dict[str, Any]]:
        return [_call(name, {"input": args}) for name, args in self._LINE.findall(text)]

    def clean(self, text: str) -> str:
        return self._LINE.sub("", text).rstrip()


class ToolCallRegistry:
    """The parsers in detection order, kept at class level."""

    _parsers: ClassVar[list[ToolCallParser]] = []

    @classmethod
    def register(cls, parser: ToolCallParser) -> ToolCallParser:
        for existing in cls._parsers:
            if existing.name == parser.name:
                return existing
        cls._parsers.append(parser)
        return parser

    @classmethod
    def parsers(cls) -> list[ToolCallParser]:
        return list(cls._parsers)

    @classmethod
    def detect_first(cls, text: str) -> ToolCallParser | None:
        return next((p for p in cls._parsers if p.detect(text)), None)


for _parser in (HermesQwenParser(), ClineParser(), VCPParser(), ReActParser()):
    ToolCallRegistry.register(_parser)
