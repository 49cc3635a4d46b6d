"""``twinkle-scheduler up``: the embedded stack as a real process (embedded Redis, API, dispatcher, worker)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent
SCRIPT = """
import os, pathlib
from twinkle import DeviceGroup
groups = [DeviceGroup(name='default', ranks=1, device_type='cpu')]
print('hello from the job', os.environ.get('TWINKLE_JOB_ID'))
out = pathlib.Path(os.environ.get('TWINKLE_OUTPUT_DIR', 'output')) / 'last-checkpoint'
out.mkdir(parents=True, exist_ok=True)
(out / 'weights.bin').write_bytes(b'abc')
"""


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWINKLE_", "AWS_")) and k != "REDIS_URL"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_up_runs_until_ctrl_c_and_stops_everything(tmp_path):
    config = tmp_path / "config.toml"
    proc = subprocess.Popen(
        [str(BIN / "twinkle-scheduler"), "up", "--port", "0", "--data-dir", str(tmp_path / "data"),
         "--config-path", str(config), "--no-worker"],
        env=clean_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not config.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "up never wrote the client config"
            time.sleep(0.2)
        cfg = tomllib.loads(config.read_text())
        assert cfg["token"].startswith("twk_u_")
        ready = httpx.get(cfg["server"] + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "ok"
        me = httpx.get(cfg["server"] + "/api/v1/users/me", headers={"Authorization": f"Bearer {cfg['token']}"})
        assert me.json()["name"] == "local"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Twinkle Commons is up" in out and "stopped." in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(cfg["server"] + "/healthz", timeout=2)


@pytest.mark.slow
@pytest.mark.e2e
def test_up_submit_follows_the_job_to_its_checkpoint(tmp_path):
    if shutil.which("twinkle-worker", path=str(BIN)) is None:
        pytest.skip("twinkle-worker is not installed")
    script = tmp_path / "hello.py"
    script.write_text(SCRIPT)
    r = subprocess.run(
        [str(BIN / "twinkle-scheduler"), "up", "--port", "0", "--data-dir", str(tmp_path / "data"),
         "--config-path", str(tmp_path / "config.toml"), "--submit", str(script)],
        env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    out = r.stdout + r.stderr
    log = (tmp_path / "data" / "worker.log")
    assert r.returncode == 0, out + (log.read_text() if log.exists() else "")
    assert "hello from the job" in out and "succeeded" in out
    where = next(line.split("checkpoint: ", 1)[1] for line in out.splitlines() if line.startswith("checkpoint: "))
    assert (Path(where.strip()) / "weights.bin").read_bytes() == b"abc"
