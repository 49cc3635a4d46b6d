import shutil

import numpy as np
import pytest

from twinkle.errors import ConfigError, SampleTooLongError, TemplateError, UnknownComponentError
from twinkle.template import Qwen3_5Template, Template, get_template

KEYS = {"input_ids", "labels", "attention_mask", "position_ids", "length"}


def supervised_text(template, feature) -> str:
    return template.decode([t for t in feature["labels"] if t != -100])


def test_only_assistant_content_is_labelled_and_labels_are_rolled(chat, template):
    f = template.encode(chat("Who are you?", "I am twinkle.", system="Be brief."))
    ids, labels = f["input_ids"], f["labels"]
    assert set(f) == KEYS and all(isinstance(f[k], np.ndarray) for k in KEYS - {"length"})
    assert supervised_text(template, f) == "I am twinkle.<|im_end|>"
    labelled = np.flatnonzero(labels != -100)
    # rolled left by one: the label at i is the token at i + 1
    assert np.array_equal(labels[labelled], ids[labelled + 1])
    assert labels[-1] == -100
    # the assistant header is not trained on: the first labelled position predicts the first content token
    header_end = template.decode(ids[: labelled[0] + 1])
    assert header_end.endswith("<|im_start|>assistant\n")
    assert np.array_equal(f["attention_mask"], np.ones(len(ids)))
    assert np.array_equal(f["position_ids"], np.arange(len(ids)))
    assert f["length"] == len(ids)


def test_every_assistant_round_is_labelled(chat, template):
    f = template.encode(chat("Hi", "Hello!", "Who made you?", "The twinkle lab."))
    assert supervised_text(template, f) == "Hello!<|im_end|>The twinkle lab.<|im_end|>"


def test_key_rounds_restrict_training_to_listed_rounds(chat, template):
    row = chat("Hi", "Hello!", "Who made you?", "The twinkle lab.")
    row["user_data"] = [("key_rounds", "[1]")]
    assert supervised_text(template, template.encode(row)) == "The twinkle lab.<|im_end|>"


def test_prefix_diff_matches_the_generation_mask(chat, tmp_path, model_dir, template):
    """A chat template without {% generation %} falls back to the round-by-round diff, with the same labels."""
    plain = tmp_path / "plain"
    shutil.copytree(model_dir, plain)
    other = Template(str(plain))
    other.tokenizer.chat_template = template.chat_template.replace("{%- generation %}", "").replace(
        "{%- endgeneration %}", ""
    )
    other.chat_template = other.tokenizer.chat_template
    other._generation_mask = False
    row = chat("Hi", "Hello!", "Who made you?", "The twinkle lab.", system="sys")
    a, b = template.encode(row), other.encode(row)
    assert np.array_equal(a["input_ids"], b["input_ids"])
    assert np.array_equal(a["labels"], b["labels"])


def test_add_generation_prompt_labels_nothing(chat, template):
    f = template.encode(chat("Who are you?"), add_generation_prompt=True)
    assert (f["labels"] == -100).all()
    assert template.decode(f["input_ids"]).endswith("<|im_start|>assistant\n")


def test_default_system_is_added_only_when_missing(chat, model_dir):
    t = Template(model_dir, default_system="You are twinkle.")
    assert "You are twinkle." in t.decode(t.encode(chat("hi", "yo"))["input_ids"])
    text = t.decode(t.encode(chat("hi", "yo", system="Other."))["input_ids"])
    assert "Other." in text and "You are twinkle." not in text


LONG = {
    "messages": [
        {"role": "user", "content": "Tell me about yourself. " * 8},
        {"role": "assistant", "content": "I am twinkle, built by the twinkle lab. " * 8},
    ]
}


def test_raise_says_the_length_the_limit_and_what_to_do(model_dir):
    t = Template(model_dir, max_length=32)
    with pytest.raises(SampleTooLongError) as err:
        t.encode(LONG)
    message = str(err.value)
    assert "max_length=32" in message and "truncation_strategy" in message
    assert str(len(Template(model_dir, max_length=100000).encode(LONG)["input_ids"])) in message


def test_left_right_split_delete_truncation(model_dir):
    full = Template(model_dir, max_length=100000).encode(LONG)
    n = len(full["input_ids"])
    left = Template(model_dir, max_length=32, truncation_strategy="left").encode(LONG)
    right = Template(model_dir, max_length=32, truncation_strategy="right").encode(LONG)
    assert np.array_equal(left["input_ids"], full["input_ids"][-32:])
    assert np.array_equal(left["labels"], full["labels"][-32:])
    assert np.array_equal(right["input_ids"], full["input_ids"][:32]) and right["length"] == 32
    chunks = Template(model_dir, max_length=32, truncation_strategy="split").encode(LONG)
    assert isinstance(chunks, list) and len(chunks) == -(-n // 32)
    assert np.array_equal(np.concatenate([c["input_ids"] for c in chunks]), full["input_ids"])
    assert all(np.array_equal(c["position_ids"], np.arange(c["length"])) for c in chunks)
    deleted = Template(model_dir, max_length=32, truncation_strategy="delete").encode(LONG)
    assert deleted["length"] == 0 and len(deleted["input_ids"]) == 0


def test_bad_truncation_strategy_is_rejected(model_dir):
    with pytest.raises(ConfigError, match="left"):
        Template(model_dir, truncation_strategy="middle")


def test_batch_encode_rows_columns_and_nested_columns(chat, template):
    rows = [chat("Hi", "Hello!"), chat("Who are you?", "I am twinkle.")]
    singles = [template.encode(r) for r in rows]
    by_rows = template.batch_encode(rows)
    assert [list(f["input_ids"]) for f in by_rows] == [list(f["input_ids"]) for f in singles]
    columns = template.batch_encode({"messages": [r["messages"] for r in rows]})
    assert [list(x) for x in columns["labels"]] == [list(f["labels"]) for f in singles]
    nested = template.batch_encode({"positive": rows, "negative": rows[::-1], "score": [1, 2]})
    # upstream: each nested item is its trajectory updated with the features; other columns pass through
    assert set(nested) == {"positive", "negative", "score"} and nested["score"] == [1, 2]
    assert list(nested["negative"][0]["input_ids"]) == list(singles[1]["input_ids"])
    assert nested["negative"][0]["messages"] == rows[1]["messages"]
    with pytest.raises(TemplateError, match="messages"):
        template.batch_encode({"query": ["hi"]})


def test_a_row_without_messages_says_to_map_it(template):
    with pytest.raises(TemplateError, match="Preprocessor"):
        template.encode({"query": "hi", "response": "yo"})


def test_concat_input_feature_appends_a_generated_reply(chat, template):
    prompt = template.encode(chat("Who are you?"), add_generation_prompt=True)
    reply = template.tokenizer("I am twinkle.<|im_end|>", add_special_tokens=False)["input_ids"]
    f = template.concat_input_feature(prompt, reply)
    n = prompt["length"]
    assert list(f["input_ids"]) == list(prompt["input_ids"]) + reply
    assert list(f["labels"]) == [-100] * (n - 1) + reply + [-100]
    assert list(f["completion_mask"]) == [0] * n + [1] * len(reply)
    # the same as encoding the whole conversation
    whole = template.encode(chat("Who are you?", "I am twinkle."))
    assert list(whole["labels"][: f["length"]]) == list(f["labels"])


def test_base_model_mode_without_chat_template(chat, model_dir):
    t = Template(model_dir, use_chat_template=False)
    f = t.encode(chat("Question: 1+1? ", "2"))
    assert t.decode(f["input_ids"]) == "Question: 1+1? 2<|im_end|>"
    assert t.decode([x for x in f["labels"] if x != -100]) == "2<|im_end|>"


def test_chosen_by_name_class_or_instance(model_dir, template):
    assert get_template(template) is template
    assert type(get_template("Template", model_id=model_dir)) is Template
    assert isinstance(get_template("Qwen3_5Template", model_id=model_dir), Qwen3_5Template)
    assert type(get_template(Template, model_id=model_dir)) is Template


def test_unknown_template_name_lists_the_known_ones(model_dir):
    with pytest.raises(UnknownComponentError) as err:
        get_template("Llama9Template", model_id=model_dir)
    assert "Llama9Template" in str(err.value) and "Qwen3_5Template" in str(err.value) and "Template" in str(err.value)


def test_think_is_moved_to_reasoning_content_when_the_template_renders_it(chat, tmp_path, model_dir):
    t = Qwen3_5Template(model_dir)
    t.chat_template = (
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
        "{%- if m.reasoning_content %}[R:{{ m.reasoning_content }}]{% endif %}"
        "{%- if m.role == 'assistant' %}{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}"
        "{%- else %}{{ m.content }}<|im_end|>{% endif %}\n{%- endfor %}"
    )
    t._renders_reasoning = True
    f = t.encode(chat("2+2?", "<think>two plus two</think>4"))
    text = t.decode(f["input_ids"])
    assert "[R:two plus two]" in text and "<think>" not in text
    assert t.decode([x for x in f["labels"] if x != -100]) == "4<|im_end|>"


def test_batch_encode_is_not_slower_than_a_plain_apply_chat_template_loop(template, chat):
    """The issue's speed bar, with a margin for a busy CI machine (bench/encode.py measures it properly: ~2x)."""
    import time

    rows = [chat(f"Who are you? {i}", f"I am twinkle number {i}.", system="Be brief.") for i in range(300)]

    def loop():
        start = time.perf_counter()
        for row in rows:
            template.tokenizer.apply_chat_template(
                row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
        return time.perf_counter() - start

    def ours():
        start = time.perf_counter()
        template.batch_encode(rows)
        return time.perf_counter() - start

    baseline, batched = min(loop() for _ in range(3)), min(ours() for _ in range(3))
    assert batched <= baseline / 0.8, f"batch_encode {batched:.3f}s vs loop {baseline:.3f}s"
