import json

import pytest

from twinkle.data_format import get_user_data
from twinkle.errors import UnknownComponentError
from twinkle.preprocessor import (
    AlpacaProcessor,
    CompetitionMathGRPOProcessor,
    CompetitionMathProcessor,
    DataFilter,
    Filter,
    GSM8KProcessor,
    Preprocessor,
    SelfCognitionProcessor,
    get_preprocessor,
)


def test_self_cognition_fills_name_and_author_into_three_messages(self_cognition_file):
    rows = [json.loads(line) for line in self_cognition_file.read_text().splitlines()[:2]]
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    out = SelfCognitionProcessor("twinkle LLM", "ModelScope community")(columns)
    assert list(out) == ["messages"] and len(out["messages"]) == 2
    system, user, assistant = out["messages"][0]
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    assert user["role"] == "user" and assistant["role"] == "assistant"
    text = user["content"] + assistant["content"]
    assert "{{" not in text and "twinkle LLM" in assistant["content"] and "ModelScope community" in assistant["content"]


def test_self_cognition_defaults():
    row = SelfCognitionProcessor().preprocess({"query": "Who?", "response": "{{NAME}} by {{AUTHOR}}"})
    assert row["messages"][2]["content"] == "twinkle robot by twinkle lab"


def test_alpaca_joins_instruction_and_input():
    out = AlpacaProcessor()(
        {"instruction": ["Translate", "Say hi"], "input": ["bonjour", ""], "output": ["hello", "hi"]}
    )
    first, second = out["messages"]
    assert first[0] == {"role": "user", "content": "Translate\nbonjour"} and first[1]["content"] == "hello"
    assert second[0]["content"] == "Say hi"


def test_gsm8k_takes_the_number_after_the_hashes():
    row = GSM8KProcessor().preprocess({"question": "2+3?", "answer": "2 plus 3\n#### 1,005"})
    assert [m["role"] for m in row["messages"]] == ["system", "user"]
    assert row["messages"][1]["content"] == "2+3?"
    assert get_user_data(row, "ground_truth") == "1005"


def test_competition_math_for_sft_and_grpo():
    row = {"problem": "1+1", "solution": "\\boxed{2}"}
    sft = CompetitionMathProcessor().preprocess(row)
    assert sft["messages"][-1] == {"role": "assistant", "content": "\\boxed{2}"}
    rl = CompetitionMathGRPOProcessor().preprocess(row)
    assert rl["messages"][-1]["role"] == "user" and get_user_data(rl, "solution") == "\\boxed{2}"


def test_a_preprocessor_can_drop_and_expand_rows():
    class Twice(Preprocessor):
        def preprocess(self, row):
            if row["x"] < 0:
                return None
            return [{"y": row["x"]}, {"y": row["x"] * 10}]

    assert Twice()({"x": [1, -1, 2]}) == {"y": [1, 10, 2, 20]}


def test_bases_say_what_to_implement():
    with pytest.raises(NotImplementedError, match="preprocess"):
        Preprocessor()({"x": [1]})
    with pytest.raises(NotImplementedError, match="__call__"):
        DataFilter()({"x": 1})
    assert Filter is DataFilter


def test_lookup_by_name_class_instance_and_unknown_name():
    assert isinstance(get_preprocessor("AlpacaProcessor"), AlpacaProcessor)
    made = get_preprocessor("SelfCognitionProcessor", model_name="n", model_author="a")
    assert (made.model_name, made.model_author) == ("n", "a")
    same = SelfCognitionProcessor()
    assert get_preprocessor(same) is same
    with pytest.raises(UnknownComponentError) as err:
        get_preprocessor("ShareGPTProcessor")
    assert "ShareGPTProcessor" in str(err.value) and "SelfCognitionProcessor" in str(err.value)
