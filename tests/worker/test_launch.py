"""worker.launch: the command each launcher builds, rank prefixes, and torchrun's failure summary."""

from __future__ import annotations

from worker.launch import AttemptDevices, attempt_devices, explain_failure, plan_launch, split_rank


def test_python_is_one_process_and_torchrun_one_per_device_on_loopback():
    one = plan_launch("python", "py", "train.py", AttemptDevices(cpu=1))
    assert one.argv == ["py", "train.py"] and one.ranks == 1
    tr = plan_launch("torchrun", "py", "train.py", AttemptDevices(cpu=2))
    assert tr.argv[:3] == ["py", "-m", "torch.distributed.run"] and tr.argv[-1] == "train.py"
    assert tr.argv[tr.argv.index("--nproc_per_node") + 1] == "2" and "--standalone" in tr.argv
    assert tr.argv[tr.argv.index("--local-addr") + 1] == "127.0.0.1"
    assert tr.ranks == 2 and tr.env["GLOO_SOCKET_IFNAME"] == "lo"


def test_gpus_of_the_attempt_become_cuda_visible_devices():
    devices = attempt_devices([{"group": "default", "device_type": "cuda", "devices": [2, 3]}])
    launch = plan_launch("torchrun", "py", "train.py", devices)
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "2,3" and launch.ranks == 2
    # an API older than pools names no devices: the worker's whole offer
    assert attempt_devices([], fallback_cuda=[0, 1, 2]).cuda == (0, 1, 2)
    assert attempt_devices([], fallback_ranks=4).count == 4


def test_ray_gets_its_own_head_on_the_given_port_limited_to_the_devices():
    launch = plan_launch("ray", "py", "train.py", AttemptDevices(cpu=2), ray_port=4321)
    assert launch.argv[:2] == ["py", "-c"]
    port, cpus, gpus, temp, entry = launch.argv[3:8]
    assert (port, cpus, gpus, entry) == ("4321", "2", "0", "train.py") and len(temp) < 40


def test_rank_prefix_of_torchrun_tee_is_read_once():
    assert split_rank("[default1]:loss 0.5") == (1, "loss 0.5")
    assert split_rank("[default0]:[default1]:fake") == (0, "[default1]:fake")
    assert split_rank("plain line") == (None, "plain line")


SUMMARY = """
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 7)  (SIGTERM)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_20:46:42
  host      : twinkle-job
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 8)
"""


def test_the_root_cause_rank_is_named_not_the_ranks_torchrun_stopped_after_it():
    assert explain_failure(SUMMARY) == (1, "killed by signal SIGKILL")
    assert explain_failure(SUMMARY.replace("-9 (pid: 8)", "3 (pid: 8)")) == (1, "exit code 3")
    assert explain_failure("Traceback: something else") is None
