"""Upstream names from the library contract: ranks and the mesh, samplers and resume, lazy and streaming datasets,
patches, the notifier, the hub module, kernels, tool-call parsers and small utilities."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from twinkle import DeviceMesh, Platform

# ---------------------------------------------------------------------------------------------- ranks, mesh


def test_platform_ranks_are_minus_one_when_unset(monkeypatch):
    assert Platform.get_rank() == -1 and Platform.get_local_rank() == -1
    assert Platform.is_master() and Platform.is_local_master() and Platform.is_last_rank()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not Platform.is_master() and not Platform.is_local_master() and Platform.is_last_rank()
    assert Platform.get_peer_index(5) == slice(3, 5)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("_PATCH_WORLD_SIZE", "3")
    assert Platform.get_world_size() == 3


def test_platform_classes():
    gpu = Platform.get_platform("CUDA")
    assert (gpu.visible_device_env(), gpu.device_prefix(), gpu.device_backend(), gpu.get_local_device(1)) == (
        "CUDA_VISIBLE_DEVICES", "cuda", "nccl", "cuda:1")
    npu = Platform.get_platform("npu")
    assert (npu.visible_device_env(), npu.device_prefix(), npu.device_backend()) == (
        "ASCEND_RT_VISIBLE_DEVICES", "npu", "hccl")
    assert Platform.get_platform("MPS").visible_device_env() is None
    with pytest.raises(ValueError, match="unknown platform"):
        Platform.get_platform("TPU")
    if not torch.cuda.is_available():  # ours reports the CPU here (upstream: GPU), documented
        assert Platform.get_platform().device_prefix() == "cpu"


def test_mesh_ranks_follow_platform_get_rank(monkeypatch):
    """Not torch.distributed: a group's own rank numbering must not leak into the mesh coordinates."""
    mesh = DeviceMesh.from_sizes(pp_size=2, tp_size=2, dp_size=2, device_type="cpu")  # (pp, dp, tp)
    # RANK unset: off the mesh
    assert mesh.dp_rank is None and mesh.tp_rank is None
    assert mesh.data_rank == 0 and mesh.get_slice(10) == slice(0, 5)  # rank 0's share of dp=2, no error
    assert not mesh.is_pp_first_rank() and not mesh.is_pp_last_rank()
    assert mesh.get_tp_ranks() == [] and not mesh.is_tp_last_rank()
    monkeypatch.setenv("RANK", "5")  # coordinates (1, 0, 1)
    assert (mesh.pp_rank, mesh.dp_rank, mesh.tp_rank) == (1, 0, 1)
    assert mesh.get_tp_ranks() == [4, 5] and mesh.is_tp_last_rank()
    assert mesh.is_pp_last_rank() and not mesh.is_pp_first_rank()
    no_tp = DeviceMesh.from_sizes(dp_size=8, device_type="cpu")
    assert no_tp.get_tp_ranks() == [5] and no_tp.is_tp_last_rank()
    with pytest.raises(ValueError, match="dp_size=None"):
        DeviceMesh.from_sizes(dp_size=None)


# ---------------------------------------------------------------------------------------------- data


class _Flaky(torch.utils.data.Dataset):
    def __init__(self, n, bad=(), empty=()):
        self.n, self.bad, self.empty, self.calls = n, set(bad), set(empty), {}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.calls[i] = self.calls.get(i, 0) + 1
        if i in self.bad and self.calls[i] <= 2:
            raise OSError("flaky read")
        return {} if i in self.empty else {"i": i}


def test_retry_sampler_retries_the_same_index_then_raises():
    from twinkle.dataloader import RetrySampler

    data = _Flaky(6, bad={2})
    assert list(RetrySampler(range(6), data, max_retries=3, seed=0)) == [0, 1, 2, 3, 4, 5]
    assert data.calls[2] == 3  # two failures, then the same index succeeded
    with pytest.raises(RuntimeError, match="sample 4 failed 2 times"):
        list(RetrySampler(range(6), _Flaky(6, empty={4}), max_retries=1))
    # skip valid items, and top up a short stream from the seeded permutation
    assert list(RetrySampler(range(6), _Flaky(6), skip_samples=4)) == [4, 5]
    topped = list(RetrySampler(range(3), _Flaky(6), seed=7))
    assert topped[:3] == [0, 1, 2] and topped[3:] == [int(i) for i in np.random.RandomState(7).permutation(6)[:3]]


def test_device_mesh_sampler_slices_and_stops():
    from torch.utils.data import BatchSampler, SequentialSampler

    from twinkle.dataloader import DeviceMeshSampler

    mesh = DeviceMesh.from_sizes(dp_size=2, device_type="cpu")
    batches = BatchSampler(SequentialSampler(range(10)), batch_size=4, drop_last=False)
    rank1 = mesh.with_rank(1)
    assert list(DeviceMeshSampler(batches, rank1)) == [[2, 3], [6, 7], [9]]
    assert list(DeviceMeshSampler(batches, rank1, min_batch_size=4)) == [[2, 3], [6, 7]]  # stops at the short one
    assert list(DeviceMeshSampler(batches, mesh.with_rank(0), skip_samples=4)) == [[4, 5], [8]]


def test_dataloader_resume_from_checkpoint():
    from twinkle.dataloader import DataLoader

    rows = [{"i": i} for i in range(10)]
    loader = DataLoader(rows, batch_size=2)
    loader.resume_from_checkpoint(4)
    first = next(iter(loader))
    assert [r["i"] for r in first] == [4, 5] and loader.get_state() == {"consumed_train_samples": 6}
    loader.resume_from_checkpoint(0)  # warns, nothing to skip
    assert [r["i"] for r in next(iter(loader))] == [0, 1]


def test_streams_have_no_length(model_dir):
    from twinkle.dataloader import DataLoader
    from twinkle.dataset import DatasetMeta, IterableDataset

    ds = IterableDataset(dataset_meta=DatasetMeta(data=[{"a": 1}, {"a": 2}]))
    for call in (lambda: len(ds), lambda: ds[0], lambda: len(DataLoader(ds, batch_size=1))):
        with pytest.raises(NotImplementedError):
            call()
        with pytest.raises(TypeError):  # what len() callers catch
            call()


def test_lazy_dataset_state_and_preprocess(model_dir):
    from twinkle.dataset import DatasetMeta, LazyDataset
    from twinkle.preprocessor import SelfCognitionProcessor

    class Counting(SelfCognitionProcessor):
        rows = 0

        def preprocess(self, row):
            Counting.rows += 1
            return super().preprocess(row)

        def __call__(self, columns):  # upstream prefers preprocess(row) at fetch time
            raise AssertionError("the column path should not run")

    ds = LazyDataset(dataset_meta=DatasetMeta(data=[{"query": "Who are {{NAME}}?", "response": "{{NAME}}"}] * 3))
    assert ds.do_encode is False and ds.do_check is False
    with pytest.raises(AssertionError, match="set_template"):
        ds.encode()
    ds.set_template("Template", model_id=model_dir, max_length=128)
    ds.map(Counting("tw", "lab"))
    ds.encode()
    ds.check()
    assert ds.do_encode is True and ds.do_check is True and ds.add_generation_prompt is False
    assert Counting.rows == 0  # nothing ran yet
    row = ds[1]
    assert Counting.rows == 1 and len(row["input_ids"]) > 0 and row["messages"][-1]["content"] == "tw"
    split = LazyDataset(dataset_meta=DatasetMeta(data=[{"q": 1}]))
    split.set_template("Template", model_id=model_dir, truncation_strategy="split")
    with pytest.raises(AssertionError, match="split"):
        split.encode()


# ---------------------------------------------------------------------------------------------- patch, kernel


def test_apply_patch_and_context():
    from twinkle.patch import NoSplitModulesPatch, apply_context, apply_patch

    module = torch.nn.Linear(2, 2)
    module._no_split_modules = ["Old"]
    apply_patch(module, NoSplitModulesPatch({"DecoderLayer"}))
    assert module._no_split_modules == ["DecoderLayer"]
    module._no_split_modules = ["Old"]
    with apply_context(module, "NoSplitModulesPatch") as patch:
        assert module._no_split_modules == ["Qwen3_5DecoderLayer"] and isinstance(patch, NoSplitModulesPatch)
    assert module._no_split_modules == ["Old"]  # unpatched on exit


def test_kernelize_swaps_classes_and_paths():
    from twinkle.kernel import hub, kernelize, liger_builtin, npu_builtin

    class Fast(torch.nn.ReLU):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.ReLU()))
    replacement = torch.nn.Tanh()
    assert kernelize(model, {torch.nn.ReLU: Fast, "0": replacement, torch.nn.GELU: {"npu": Fast}}) is model
    assert type(model[1]) is Fast and type(model[2][0]) is Fast and model[0] is replacement
    assert kernelize(model) is model and npu_builtin() == {}  # no mapping: a no-op off NPU
    with pytest.raises(TypeError, match="dotted attribute paths"):
        kernelize(model, {3: Fast})
    with pytest.raises(ValueError, match="exactly one"):
        hub("org/repo:Layer")
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="liger-kernel"):
            liger_builtin(model)


# ---------------------------------------------------------------------------------------------- notifier


def test_ding_notifier_signs_and_posts(tmp_path, monkeypatch):
    from twinkle.notifier import DingNotifier, Notifier, notify_exception

    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, body))
            reply = {"errcode": 0} if len(received) == 1 else {"errcode": 310000, "errmsg": "bad sign"}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/robot/send?access_token=t"
        notifier = DingNotifier(url, secret="s3cret")
        notifier("**hello**")
        path, body = received[0]
        query = urllib.parse.parse_qs(urllib.parse.urlparse(path).query)
        timestamp = query["timestamp"][0]
        expected = base64.b64encode(hmac.new(b"s3cret", f"{timestamp}\ns3cret".encode(), hashlib.sha256).digest())
        assert query["sign"][0] == expected.decode() and body["msgtype"] == "markdown"
        with pytest.raises(RuntimeError, match="errcode 310000"):
            notifier("again")
        assert Notifier.from_dict(notifier.to_dict()).ding_url == url
        # notify_exception: once per fingerprint, never raises even when the notifier fails
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("TWINKLE_RUN_ID", "run1")
        sent = []
        assert notify_exception(sent.append, "step 3", ValueError("boom")) is True
        assert notify_exception(sent.append, "step 3", ValueError("boom")) is False and len(sent) == 1
        assert notify_exception(notifier, "other", KeyError("x")) is False  # the server says errcode != 0
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------------- hub


def test_hub_operation_dispatch_and_aliases(monkeypatch, tmp_path, model_dir):
    from twinkle.hub.hub import HFHub, HubOperation, MSHub
    from twinkle.hub.model_alias import load_model_alias_map, resolve_model_id_alias

    assert HubOperation.hub_for("ms://a/b") is MSHub and HubOperation.hub_for("a/b") is MSHub
    assert HubOperation.hub_for("hf://a/b") is HFHub
    monkeypatch.setenv("TWINKLE_FORBID_HF", "1")
    with pytest.raises(ValueError, match="TWINKLE_FORBID_HF"):
        HubOperation.download_model("hf://a/b")
    monkeypatch.setenv("TWINKLE_MODEL_ID_ALIASES", json.dumps({"Qwen/Tiny": model_dir}))
    assert resolve_model_id_alias("ms://Qwen/Tiny") == model_dir
    assert HubOperation.download_model("Qwen/Tiny") == model_dir  # an alias to a local path: no network
    assert HubOperation.download_model(model_dir) == model_dir
    monkeypatch.setenv("TWINKLE_MODEL_ID_ALIASES", "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        load_model_alias_map()


# ---------------------------------------------------------------------------------------------- tool calls


def test_tool_call_parsers(template):
    from twinkle.template import ClineParser, ReActParser, ToolCallRegistry, VCPParser

    assert [p.name for p in ToolCallRegistry.parsers()][:4] == ["hermes_qwen", "cline", "vcp", "react"]
    text = 'Sure. <tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>'
    calls = template.parse_tool_call(text)
    assert calls[0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert template.clean_tool_call(text) == "Sure."
    qwen = "<tool_call><function=add><parameter=a>1</parameter><parameter=b> x </parameter></function>"  # unclosed
    assert template.parse_tool_call(qwen)[0]["function"]["arguments"] == {"a": 1, "b": "x"}
    assert template.parse_tool_call("<tool_call>{not json}</tool_call>") == []
    cline = "I will read it.\n<read_file>\n<path> src/a.py </path>\n</read_file>"
    assert ClineParser().parse(cline)[0]["function"] == {"name": "read_file", "arguments": {"path": "src/a.py"}}
    assert ClineParser().clean(cline) == "I will read it." and not ClineParser().detect("<think><a>1</a></think>")
    assert ClineParser().extract_tool_result("[tool for 'read_file'] Result: ok") == "ok"
    vcp = "<<<[TOOL_REQUEST]>>>\ntool_name:「始」Search「末」,\nquery:「始」 cats 「末」\n<<<[END_TOOL_REQUEST]>>>"
    assert VCPParser().parse(vcp)[0]["function"] == {"name": "Search", "arguments": {"query": " cats "}}
    assert ReActParser().parse("Thought: look\nAction: search[twinkle]")[0]["function"]["arguments"] == {
        "input": "twinkle"}
    assert template.parse_tool_call("no call here ") == [] and template.clean_tool_call("plain  ") == "plain"


def test_left_out_p2_names_say_so():
    from twinkle.errors import NotBuiltError

    with pytest.raises(NotBuiltError, match="DeepSeek-V4"):
        from twinkle.template import DeepseekV4Template  # noqa: F401
    from twinkle.metric import CISPOMetric

    with pytest.raises(NotBuiltError, match="top_k_kl"):
        CISPOMetric(top_k_kl=4)


# ---------------------------------------------------------------------------------------------- utils, model


def test_utils(tmp_path, monkeypatch):
    import pickle

    import twinkle
    from twinkle.utils import find_all_linears, to_device, torch_util

    assert twinkle.exists("torch>=2") and not twinkle.exists("torch<1")
    with pytest.raises(ImportError, match="no-such-pkg-xyz is not installed"):
        twinkle.requires("no-such-pkg-xyz")
    port = twinkle.find_free_port()
    assert 0 < port < 65536
    monkeypatch.setenv("TWINKLE_TRUST_REMOTE_CODE", "0")
    assert not twinkle.trust_remote_code()
    with pytest.raises(ValueError, match="callable"):
        twinkle.check_unsafe(1, cfg={"fn": print})
    twinkle.check_unsafe(1, cfg={"x": [1, "a"]})
    data = {"a": [torch.zeros(1), (torch.ones(1),)], "b": 3}
    moved = to_device(data, "cpu")
    assert isinstance(moved["a"][1], tuple) and moved["b"] == 3
    net = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(2, 2), "lm_head": torch.nn.Linear(2, 2)})
    assert find_all_linears(net) == ["q_proj"]
    assert torch_util.get_device() == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert torch_util.contains_nan(torch.tensor([float("nan")])) and not torch_util.contains_nan(x=torch.ones(1))
    monkeypatch.chdir(tmp_path)
    from twinkle.utils.parallel import PosixFileLock, processing_lock

    lock = PosixFileLock(tmp_path / "x.lock")
    with lock:
        assert pickle.loads(pickle.dumps(lock)).path == lock.path
    with processing_lock("job"):
        assert (tmp_path / ".locks" / "job.lock").exists()


def test_strategy_objects_and_optimizer_group(model_dir):
    from twinkle.errors import ConfigError
    from twinkle.model import TransformersModel
    from twinkle.model.transformers.strategy import AccelerateStrategy, NativeFSDPStrategy

    model = TransformersModel(model_id=model_dir, strategy="native_fsdp")
    assert isinstance(model.strategy, NativeFSDPStrategy) and model.strategy == "native_fsdp"
    assert model.optimizer_group is model.optimizer_groups and model.optimizer_group[""].cur_step == 0
    assert TransformersModel(model_id=model_dir).strategy == AccelerateStrategy()
    with pytest.raises(ConfigError, match="strategy must be"):
        TransformersModel(model_id=model_dir, strategy="deepspeed")


def test_task_keyword(model_dir):
    from twinkle.errors import ConfigError, NotBuiltError
    from twinkle.model import TransformersModel

    model = TransformersModel(model_id=model_dir)
    batch = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    assert "logps" in model.forward(inputs=batch, task="causal_lm")
    with pytest.raises(NotBuiltError, match="embedding"):
        model.forward_only(inputs=batch, task="embedding")
    with pytest.raises(ConfigError, match="task must be"):
        model.forward(inputs=batch, task="classify")
    assert model._lazy_wrap_model() is model.model  # one process: nothing to wrap
