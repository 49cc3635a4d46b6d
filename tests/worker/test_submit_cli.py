"""twinkle-submit's command line without a server: default command, bad input, missing token."""

from __future__ import annotations

import pytest

from submit.cli import main, parse_memory_gb
from submit.client import ConfigError, _parse_sse, resolve_connection


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TWINKLE_TOKEN", raising=False)
    monkeypatch.delenv("TWINKLE_API_URL", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")


def test_non_python_file_exits_2_with_a_message(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hi")
    code, _, err = run_cli([str(tmp_path / "notes.txt")], capsys)
    assert code == 2 and "not a Python script" in err


def test_missing_token_says_how_to_get_one(tmp_path, capsys):
    (tmp_path / "train.py").write_text("print(1)")
    code, _, err = run_cli(["submit", str(tmp_path / "train.py"), "--server", "http://127.0.0.1:9"], capsys)
    assert code == 1 and "no API token" in err and "TWINKLE_TOKEN" in err and "--token" in err


def test_unreachable_server_is_reported(tmp_path, capsys):
    (tmp_path / "train.py").write_text("print(1)")
    code, _, err = run_cli([str(tmp_path / "train.py"), "--server", "http://127.0.0.1:9", "--token", "t"], capsys)
    assert code == 1 and "cannot reach http://127.0.0.1:9" in err


def test_token_and_server_resolution_order(tmp_path, monkeypatch):
    cfg = tmp_path / "config" / "twinkle" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('server = "http://cfg:1"\ntoken = "from-config"\n')
    assert resolve_connection(None, None) == ("http://cfg:1", "from-config")
    monkeypatch.setenv("TWINKLE_TOKEN", "from-env")
    monkeypatch.setenv("TWINKLE_API_URL", "http://env:2/")
    assert resolve_connection(None, None) == ("http://env:2", "from-env")
    assert resolve_connection("http://flag:3", "from-flag") == ("http://flag:3", "from-flag")
    with pytest.raises(ConfigError, match="not a URL"):
        resolve_connection("localhost:8000", "t")


def test_broken_config_file_is_named(tmp_path):
    cfg = tmp_path / "config" / "twinkle" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("token = \n")
    with pytest.raises(ConfigError, match=r"config\.toml is not valid TOML"):
        resolve_connection(None, None)


@pytest.mark.parametrize("text,gb", [("24GB", 24.0), ("24g", 24.0), ("16GiB", 16.0), ("7.5", 7.5)])
def test_parse_memory(text, gb):
    assert parse_memory_gb(text) == gb


def test_parse_memory_rejects_garbage():
    import typer

    with pytest.raises(typer.BadParameter, match="24GB"):
        parse_memory_gb("lots")


def test_sse_parser():
    lines = ["id: 1-0", "data: hello", "", ": keepalive", "id: 2-0", "data: a", "data: b", "", "event: end", "data: ", ""]
    events = list(_parse_sse(iter(lines)))
    assert [(e.id, e.event, e.data) for e in events] == [("1-0", "message", "hello"), ("2-0", "message", "a\nb"), (None, "end", "")]


def test_help_lists_commands(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for command in ("submit", "list", "status", "logs", "cancel", "download", "inspect"):
        assert command in out


def _fake_server(monkeypatch, status: int, body: dict):
    import httpx

    import submit.cli as cli
    from submit.client import Client

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    monkeypatch.setattr(cli, "_client", lambda server, token: Client("http://api", "t", transport=httpx.MockTransport(handler)))


def test_422_lists_every_field(tmp_path, monkeypatch, capsys):
    _fake_server(monkeypatch, 422, {"error": {"code": "invalid_job", "message": "the job has 2 problems",
                                              "fields": {"entrypoint": "not in the bundle", "request.ranks": ["must be >= 1"]}}})
    (tmp_path / "train.py").write_text("print(1)")
    code, _, err = run_cli([str(tmp_path / "train.py")], capsys)
    assert code == 2
    assert "the job has 2 problems" in err and "entrypoint: not in the bundle" in err and "request.ranks: must be >= 1" in err


def test_401_says_the_token_is_wrong(monkeypatch, capsys):
    _fake_server(monkeypatch, 401, {"error": {"code": "unauthorized", "message": "unknown token"}})
    code, _, err = run_cli(["status", "abc"], capsys)
    assert code == 1 and "refused the token" in err and "TWINKLE_TOKEN" in err


def test_404_names_the_job(monkeypatch, capsys):
    _fake_server(monkeypatch, 404, {"error": {"code": "not_found", "message": "no job 'abc'"}})
    code, _, err = run_cli(["cancel", "abc"], capsys)
    assert code == 1 and "no job 'abc'" in err and "twinkle-submit list" in err


@pytest.mark.parametrize("flag", [True, False])
def test_allow_unsandboxed_is_sent_only_when_asked(tmp_path, monkeypatch, capsys, flag):
    import httpx

    import submit.cli as cli
    from submit.client import Client

    sent: list[bytes] = []

    import datetime as dt

    from contract.jobs import Job, StoredDeviceGroup, StoredRequest

    now = dt.datetime.now(dt.UTC)
    job = Job(id="j1", name="train", user_id="u1", state="queued", entrypoint="train.py",
              request=StoredRequest(device_groups=[StoredDeviceGroup(name="default", ranks=1, device_type="any", min_memory_gb=0)],
                                    allow_unsandboxed=flag), warnings=[],
              bundle_size=1, attempt=0, worker_id=None, queue_position=1, pending_reason=None, error=None,
              created_at=now, updated_at=now, started_at=None, ended_at=None, attempts=[])

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.read())
        return httpx.Response(201, json=job.model_dump(mode="json"))

    monkeypatch.setattr(cli, "_client", lambda server, token: Client("http://api", "t", transport=httpx.MockTransport(handler)))
    (tmp_path / "train.py").write_text("print(1)")
    code, _, err = run_cli([str(tmp_path / "train.py"), *(["--allow-unsandboxed"] if flag else [])], capsys)
    assert code == 0
    body = sent[-1]
    assert (b'name="allow_unsandboxed"\r\n\r\ntrue' in body) is flag
    assert ("does not isolate it" in err) is flag


def test_a_zip_name_from_the_server_cannot_leave_the_destination_folder():
    from submit.client import _attachment_name

    assert _attachment_name('attachment; filename="j1-last-checkpoint.zip"') == "j1-last-checkpoint.zip"
    assert _attachment_name('attachment; filename="../../.bashrc"') == ".bashrc"
    assert _attachment_name('attachment; filename="..\\\\..\\\\x.zip"') == "x.zip"
    assert _attachment_name('attachment; filename=".."') is None
    assert _attachment_name("inline") is None
