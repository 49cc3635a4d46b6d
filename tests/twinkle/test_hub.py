import time

import pytest

from twinkle.errors import HubError
from twinkle.hub import download_model, parse_hub_id, resolve_model_path
from twinkle.template import Template


def test_parse_hub_ids():
    ms = parse_hub_id("ms://Qwen/Qwen2.5-7B-Instruct")
    assert (ms.hub, ms.repo_id) == ("modelscope", "Qwen/Qwen2.5-7B-Instruct")
    assert parse_hub_id("hf://org/name").hub == "huggingface"
    assert parse_hub_id("org/name").hub == "modelscope"  # no prefix: ModelScope


def test_a_local_path_is_used_directly(model_dir):
    assert resolve_model_path(model_dir) == model_dir


def test_a_missing_local_path_is_not_sent_to_a_hub(tmp_path):
    with pytest.raises(HubError, match="does not exist"):
        resolve_model_path(str(tmp_path / "no-model"))


def test_unreachable_hub_fails_fast_naming_the_id(monkeypatch):
    monkeypatch.setenv("TWINKLE_HUB_TIMEOUT", "2")
    start = time.monotonic()
    with pytest.raises(HubError) as err:
        Template("ms://Qwen/Qwen2.5-7B-Instruct")
    assert "ms://Qwen/Qwen2.5-7B-Instruct" in str(err.value) and "ModelScope" in str(err.value)
    assert time.monotonic() - start < 20


def test_offline_setting_refuses_without_trying(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline"):
        download_model("hf://org/name")


def test_forbid_hf_blocks_hf_ids(monkeypatch):
    monkeypatch.setenv("TWINKLE_FORBID_HF", "1")
    with pytest.raises(HubError, match="TWINKLE_FORBID_HF"):
        download_model("hf://org/name")
