"""``Template``: turn trajectories (chat messages) into model tokens with training labels.

Encoding, per trajectory:
  1. pre-process: add ``default_system``; move ``<think>...</think>`` into ``reasoning_content`` when the chat
     template renders that field; flatten text-only multimodal content.
  2. render with the tokenizer's chat template and tokenize (a whole batch in one tokenizer call); assistant
     content comes from the template's ``{% generation %}`` spans, else from a round-by-round prefix diff.
     Every token that is not assistant content (role headers included) is labelled -100.
  3. post-process: roll labels left by one (``labels[i]`` is the target of token ``i``), apply the truncation
     strategy, add ``attention_mask``, ``position_ids`` and ``length``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from twinkle.data_format import InputFeature, Trajectory, get_user_data
from twinkle.errors import ConfigError, SampleTooLongError, TemplateError
from twinkle.hub import resolve_model_path
from twinkle.template.utils import prefix_diff_spans, spans_to_token_mask, supports_generation_mask

TRUNCATION_STRATEGIES = ("raise", "left", "right", "split", "delete")
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)


def nested_trajectory_columns(columns: dict[str, Any]) -> list[str]:
    """The columns whose first value is a dict holding ``messages`` (``positive``/``negative`` of DPO rows)."""
    return [
        k for k, v in columns.items()
        if isinstance(v, list) and v and isinstance(v[0], dict) and "messages" in v[0]
    ]


def _empty_feature() -> InputFeature:
    empty = np.zeros(0, dtype=np.int64)
    return InputFeature(
        input_ids=empty, labels=empty.copy(), attention_mask=empty.copy(), position_ids=empty.copy(), length=0
    )


def _feature(input_ids: np.ndarray, labels: np.ndarray) -> InputFeature:
    n = len(input_ids)
    return InputFeature(
        input_ids=input_ids,
        labels=labels,
        attention_mask=np.ones(n, dtype=np.int64),
        position_ids=np.arange(n, dtype=np.int64),
        length=n,
    )


class Template:
    """Encode chat trajectories for one model's tokenizer.

    Args:
        model_id: a local model folder, or an ``ms://`` / ``hf://`` id (no prefix: ModelScope).
        use_chat_template: render with the tokenizer's chat template; ``False`` concatenates message contents
            (assistant content followed by the EOS token), for base models.
        max_length: the longest encoded sample allowed.
        truncation_strategy: what to do with a longer sample: ``'raise'`` (SampleTooLongError), ``'left'`` (keep
            the end), ``'right'`` (keep the start), ``'split'`` (chunks of ``max_length``), ``'delete'`` (an
            empty sample, which ``Dataset.encode`` drops).
        default_system: a system prompt added to conversations that have none.
        enable_thinking: passed to the chat template (Qwen3-style templates read it).
        **template_kwargs: extra variables for the chat template.

    >>> t = Template('/path/to/model', max_length=512)
    >>> f = t.encode({'messages': [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]})
    >>> sorted(f)
    ['attention_mask', 'input_ids', 'labels', 'length', 'position_ids']
    """

    def __init__(
        self,
        model_id: str,
        use_chat_template: bool = True,
        max_length: int = 8192,
        truncation_strategy: str = "raise",
        default_system: str | None = None,
        enable_thinking: bool = True,
        **template_kwargs: Any,
    ) -> None:
        if truncation_strategy not in TRUNCATION_STRATEGIES:
            raise ConfigError(
                f"unknown truncation_strategy {truncation_strategy!r}; use one of {', '.join(TRUNCATION_STRATEGIES)}"
            )
        if max_length is not None and max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {max_length}")
        self.model_id = model_id
        self.use_chat_template = use_chat_template
        self.max_length = max_length
        self.truncation_strategy = truncation_strategy
        self.default_system = default_system
        self.enable_thinking = enable_thinking
        self.template_kwargs = template_kwargs
        self.model_dir = resolve_model_path(model_id)
        self.processor, self.tokenizer = self._load_tokenizer(self.model_dir)
        self.chat_template: str | None = None
        if use_chat_template:
            try:
                self.chat_template = self.tokenizer.get_chat_template()
            except ValueError as exc:
                raise TemplateError(
                    f"the tokenizer of {model_id!r} has no chat template; pass use_chat_template=False for a base "
                    f"model, or set tokenizer.chat_template"
                ) from exc
        self._generation_mask = supports_generation_mask(self.chat_template)
        self._renders_reasoning = bool(self.chat_template and "reasoning_content" in self.chat_template)

    @property
    def tokenizer_id(self) -> str:
        return self.model_id

    @staticmethod
    def _load_tokenizer(model_dir: str):
        from transformers import AutoProcessor, AutoTokenizer

        if (Path(model_dir) / "preprocessor_config.json").exists():
            processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
            return processor, getattr(processor, "tokenizer", processor)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
        return None, tokenizer

    # ------------------------------------------------------------------ pre-processing

    def _messages(self, trajectory: Trajectory | Sequence[dict]) -> list[dict]:
        messages: Sequence[Any]
        if isinstance(trajectory, dict):
            if "messages" not in trajectory:
                raise TemplateError(
                    f"cannot encode a row without 'messages' (it has {sorted(trajectory)}); map it with a "
                    f"Preprocessor first"
                )
            messages = trajectory["messages"]
        else:
            messages = trajectory
        out: list[dict[str, Any]] = []
        for raw in messages:
            message = {k: v for k, v in dict(raw).items() if v is not None}
            content = message.get("content")
            if isinstance(content, list):
                texts = []
                for part in content:
                    if isinstance(part, str):
                        texts.append(part)
                    elif part.get("type") == "text":
                        texts.append(part.get("text", ""))
                    elif self.processor is None:
                        raise TemplateError(
                            f"message part of type {part.get('type')!r} needs a multimodal model; {self.model_id!r}"
                            f" has only a tokenizer"
                        )
                message["content"] = "".join(texts)
            elif content is None:
                message["content"] = ""
            if self._renders_reasoning and message.get("role") == "assistant" and "reasoning_content" not in message:
                match = _THINK.match(message["content"])
                if match:
                    message["reasoning_content"] = match.group(1).strip()
                    message["content"] = message["content"][match.end() :]
            out.append(message)
        if self.default_system and (not out or out[0].get("role") != "system"):
            out.insert(0, {"role": "system", "content": self.default_system})
        return out

    # ------------------------------------------------------------------ rendering

    def _render_kwargs(self) -> dict[str, Any]:
        return {**self.tokenizer.special_tokens_map, "enable_thinking": self.enable_thinking, **self.template_kwargs}

    def _render(self, messages: list[dict], tools: Any, add_generation_prompt: bool, with_spans: bool):
        from transformers.utils.chat_template_utils import render_jinja_template

        # annotated as returning str, it returns (rendered texts, assistant spans per text)
        rendered: Any = render_jinja_template(
            conversations=[messages],
            tools=tools or None,
            chat_template=self.chat_template,
            return_assistant_tokens_mask=with_spans,
            add_generation_prompt=add_generation_prompt,
            **self._render_kwargs(),
        )
        texts, spans = rendered
        return texts[0], (spans[0] if with_spans else [])

    def _render_plain(self, messages: list[dict], add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
        eos = self.tokenizer.eos_token or ""
        text, spans = "", []
        for message in messages:
            if message.get("role") == "assistant":
                start = len(text)
                text += message["content"] + eos
                spans.append((start, len(text)))
            else:
                text += message["content"]
        return text, spans

    def _text_and_spans(self, trajectory: Any, add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
        messages = self._messages(trajectory)
        tools = trajectory.get("tools") if isinstance(trajectory, dict) else None
        key_rounds = get_user_data(trajectory, "key_rounds") if isinstance(trajectory, dict) else None
        rounds = set(key_rounds) if key_rounds is not None else None
        if not self.use_chat_template:
            text, spans = self._render_plain(messages, add_generation_prompt)
            if rounds is not None:
                spans = [s for k, s in enumerate(spans) if k in rounds]
            return text, spans
        if add_generation_prompt:
            return self._render(messages, tools, True, False)[0], []
        if self._generation_mask:
            text, spans = self._render(messages, tools, False, True)
            if rounds is None:
                return text, spans
            if len(spans) == sum(m.get("role") == "assistant" for m in messages):
                return text, [s for k, s in enumerate(spans) if k in rounds]
        return prefix_diff_spans(
            lambda msgs, gen: self._render(msgs, tools, gen, False)[0] if msgs else "", messages, rounds
        )

    # ------------------------------------------------------------------ encoding

    def _tokenize(self, texts: list[str], spans: list[list[tuple[int, int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids and assistant masks for a batch of rendered texts, in one tokenizer call."""
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch"):
            return [self._tokenize_slow(text, s) for text, s in zip(texts, spans, strict=True)]
        # the Rust tokenizer directly: the Python wrapper converts every field of every encoding, which costs
        # as much as the tokenization itself
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        out = []
        for encoding, text_spans in zip(encodings, spans, strict=True):
            ids = np.array(encoding.ids, dtype=np.int64)
            mask = np.zeros(len(ids), dtype=bool)
            for start, end in text_spans:
                first = encoding.char_to_token(start)
                last = encoding.char_to_token(end - 1) if end > start else None
                if first is None or last is None:
                    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
                    mask |= spans_to_token_mask(offsets, [(start, end)])
                else:
                    mask[first : last + 1] = True
            out.append((ids, mask))
        return out

    def _tokenize_slow(self, text: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        # slow tokenizers have no offsets: tokenize the pieces between span boundaries separately
        ids: list[int] = []
        mask: list[bool] = []
        cursor = 0
        for start, end in [*spans, (len(text), len(text))]:
            for piece, flag in ((text[cursor:start], False), (text[start:end], True)):
                if piece:
                    piece_ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
                    ids += piece_ids
                    mask += [flag] * len(piece_ids)
            cursor = end
        return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)

    def _postprocess(self, ids: np.ndarray, mask: np.ndarray) -> list[InputFeature]:
        labels = np.full(len(ids), -100, dtype=np.int64)
        labels[:-1] = np.where(mask[1:], ids[1:], -100)  # rolled left by one: the target of each position
        n, limit = len(ids), self.max_length
        if limit is None or n <= limit:
            return [_feature(ids, labels)]
        strategy = self.truncation_strategy
        if strategy == "raise":
            raise SampleTooLongError(
                f"an encoded sample has {n} tokens, more than max_length={limit}; raise max_length, or pick "
                f"truncation_strategy='left', 'right', 'split' or 'delete' (set_template(..., truncation_strategy=))"
            )
        if strategy == "left":
            return [_feature(ids[-limit:], labels[-limit:])]
        if strategy == "right":
            return [_feature(ids[:limit], labels[:limit])]
        if strategy == "split":
            return [_feature(ids[i : i + limit], labels[i : i + limit]) for i in range(0, n, limit)]
        return [_empty_feature()]

    def encode_many(self, trajectories: Iterable[Any], add_generation_prompt: bool = False) -> list[list[InputFeature]]:
        """Encode each trajectory; one list of features per input (several under 'split')."""
        rendered = [self._text_and_spans(t, add_generation_prompt) for t in trajectories]
        tokens = self._tokenize([r[0] for r in rendered], [r[1] for r in rendered])
        return [self._postprocess(ids, mask) for ids, mask in tokens]

    def encode(self, trajectory: Trajectory | dict, add_generation_prompt: bool = False) -> InputFeature | list:
        """Encode one trajectory. Returns one ``InputFeature`` (a list of them when 'split' cut it in chunks).

        ``add_generation_prompt=True`` appends the assistant header for generation; every label is then -100.

        Raises:
            SampleTooLongError: longer than ``max_length`` under truncation_strategy='raise'.
            TemplateError: the row has no ``messages``.
        """
        features = self.encode_many([trajectory], add_generation_prompt)[0]
        return features[0] if len(features) == 1 else features

    def batch_encode(self, inputs: Any, add_generation_prompt: bool = False) -> Any:
        """Encode many trajectories at once.

        Accepts rows (a list of trajectories) -> a list of features; columns (``{'messages': [...], ...}``) ->
        columns of features; or nested columns (``{'positive': [traj, ...], 'negative': [traj, ...]}``) -> the
        same keys, each a list of features.
        """
        if isinstance(inputs, list):
            return [f for features in self.encode_many(inputs, add_generation_prompt) for f in features]
        if not isinstance(inputs, dict):
            raise TemplateError(f"batch_encode takes rows (a list) or columns (a dict), got {type(inputs).__name__}")
        if "messages" in inputs:
            features, _ = self.encode_columns(inputs, add_generation_prompt)
            return features
        nested = nested_trajectory_columns(inputs)
        if not nested:
            raise TemplateError(
                f"batch_encode found no 'messages' column and no nested trajectory columns in {sorted(inputs)}"
            )
        # upstream: each nested item becomes the trajectory updated with its features (messages stay); other
        # columns pass through unchanged
        out = dict(inputs)
        for key in nested:
            rows = inputs[key]
            encoded = self.encode_many(rows, add_generation_prompt)
            if any(len(features) != 1 for features in encoded):
                raise TemplateError(
                    f"nested column {key!r}: truncation_strategy={self.truncation_strategy!r} turned a trajectory "
                    f"into {max(len(f) for f in encoded)} samples; preference pairs need one sample per trajectory, "
                    f"so use 'raise', 'left' or 'right'"
                )
            out[key] = [{**row, **features[0]} for row, features in zip(rows, encoded, strict=True)]
        return out

    def encode_columns(self, columns: dict[str, list], add_generation_prompt: bool = False):
        """Encode a batch given as columns; returns (feature columns, index of the source row of each output)."""
        keys = list(columns)
        n = len(columns["messages"])
        rows = [{k: columns[k][i] for k in keys} for i in range(n)]
        out: dict[str, list] = {k: [] for k in ("input_ids", "labels", "attention_mask", "position_ids", "length")}
        index: list[int] = []
        for i, features in enumerate(self.encode_many(rows, add_generation_prompt)):
            for feature in features:
                for key in out:
                    out[key].append(cast(dict[str, Any], feature)[key])
                index.append(i)
        return out, index

    # ------------------------------------------------------------------ tool calls

    def parse_tool_call(self, text: str) -> list[dict[str, Any]]:
        """The tool calls in generated ``text``, by the first registered parser that detects them (``[]`` if none)."""
        from twinkle.template.tools import ToolCallRegistry

        parser = ToolCallRegistry.detect_first(text)
        return parser.parse(text) if parser is not None else []

    def clean_tool_call(self, text: str) -> str:
        """``text`` with that parser's tool-call markup removed (else just right-stripped)."""
        from twinkle.template.tools import ToolCallRegistry

        parser = ToolCallRegistry.detect_first(text)
        return parser.clean(text) if parser is not None else text.rstrip()

    # ------------------------------------------------------------------ generation helpers

    def concat_input_feature(self, prompt: InputFeature, new_tokens: Sequence[int]) -> InputFeature:
        """Append generated tokens to an encoded prompt; the new tokens become the (rolled) labels.

        ``completion_mask[i]`` is 1 where ``input_ids[i]`` was generated.
        """
        prompt_ids = np.asarray(prompt["input_ids"], dtype=np.int64)
        new = np.asarray(list(new_tokens), dtype=np.int64)
        ids = np.concatenate([prompt_ids, new])
        prompt_labels = np.asarray(prompt.get("labels", np.full(len(prompt_ids), -100)), dtype=np.int64)
        labels = np.concatenate([prompt_labels[:-1] if len(prompt_labels) else prompt_labels, new, [-100]])
        if not len(prompt_ids):
            labels = np.concatenate([new[1:], [-100]]) if len(new) else new
        feature = _feature(ids, labels[: len(ids)])
        feature["completion_mask"] = np.concatenate([np.zeros(len(prompt_ids), np.int64), np.ones(len(new), np.int64)])
        return feature

    def decode(self, token_ids: Sequence[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(list(token_ids), **kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_id={self.model_id!r}, max_length={self.max_length}, "
            f"truncation_strategy={self.truncation_strategy!r})"
        )
