"""Connect to Ray and reserve every DeviceGroup's ranks with a placement group.

One placement group per DeviceGroup, one bundle per rank (``{'CPU': 1}`` for cpu groups, ``{'GPU':
gpus_per_worker}`` for cuda/GPU ones), strategy PACK so ranks fill a node before spilling to the next. A group is
reserved all at once or not at all: before waiting, the group is checked against the cluster's resources, and the
wait itself has a timeout, so an impossible group fails at once with the numbers instead of hanging.

Environment:
    RAY_ADDRESS: connect to this cluster instead of starting a local one.
    TWINKLE_RAY_NUM_CPUS: logical CPUs of a local cluster (default: the ranks of the cpu groups).
    TWINKLE_RAY_PG_TIMEOUT: seconds to wait for a placement group (default 60).
    RAY_worker_niceness, RAY_event_stats, RAY_task_events_report_interval_ms: a local cluster starts its workers at
        niceness 0, like the ranks of torchrun (Ray's own default is 15, which lets any other busy process on the
        machine starve the training actors), and without Ray's event statistics and task-state reports (the
        dashboard that reads them is not started); set a variable to keep Ray's default or choose another value.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from twinkle.errors import ConfigError
from twinkle.infra.ray._errors import ClusterResourceError
from twinkle.infra.ray._serialization import register_tensor_serializer
from twinkle.utils.device_mesh import DeviceGroup
from twinkle.utils.logger import get_logger

logger = get_logger("twinkle.infra.ray")

__all__ = [
    "GroupPlacement", "get_device_placement", "get_global_device_mesh", "get_placement", "init_ray", "shutdown_ray"
]


@dataclass
class GroupPlacement:
    """A DeviceGroup and the placement group that holds its ranks."""

    group: DeviceGroup
    placement_group: Any
    resource: str  # 'CPU' or 'GPU'
    per_rank: float
    bundle_nodes: list[str] = field(default_factory=list)

    @property
    def num_ranks(self) -> int:
        return self.group.num_ranks

    def local_ranks(self) -> list[tuple[int, int]]:
        """``(LOCAL_RANK, LOCAL_WORLD_SIZE)`` per rank, from the node each bundle landed on."""
        if self.resource == "GPU":
            # Ray hands every GPU worker its own CUDA_VISIBLE_DEVICES, so each sees its device as index 0.
            per_node = Counter(self.bundle_nodes)
            return [(0, per_node[node]) for node in self.bundle_nodes]
        seen: Counter[str] = Counter()
        per_node = Counter(self.bundle_nodes)
        out = []
        for node in self.bundle_nodes:
            out.append((seen[node], per_node[node]))
            seen[node] += 1
        return out


@dataclass
class _Cluster:
    groups: dict[str, GroupPlacement] = field(default_factory=dict)
    started_here: bool = False
    seed: int = 42
    nproc_per_node: int = 8
    ncpu_proc_per_node: int = 8
    global_mesh: Any = None
    options: dict[str, Any] = field(default_factory=dict)


_cluster = _Cluster()


def _resource_of(group: DeviceGroup) -> tuple[str, float]:
    kind = str(group.device_type).lower()
    if kind == "cpu":
        return "CPU", 1.0
    if kind in ("cuda", "gpu"):
        return "GPU", float(group.gpus_per_worker)
    if kind == "npu":
        return "NPU", float(group.gpus_per_worker)
    raise ConfigError(f"DeviceGroup {group.name!r}: device_type {group.device_type!r} cannot run under Ray")


def _local_num_cpus(groups: list[DeviceGroup]) -> int | None:
    env = os.environ.get("TWINKLE_RAY_NUM_CPUS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ConfigError(f"TWINKLE_RAY_NUM_CPUS must be a whole number, got {env!r}") from None
        if value < 1:
            raise ConfigError(f"TWINKLE_RAY_NUM_CPUS must be at least 1, got {value}")
        return value
    cpu_ranks = sum(g.num_ranks for g in groups if _resource_of(g)[0] == "CPU")
    return cpu_ranks or None  # None: Ray counts the machine's cores (GPU-only jobs)


# Settings of a local cluster this process starts (each is left alone when its RAY_<name> variable is set).
# The actors share the driver's machine, so what Ray does in the background comes out of training time:
#   worker_niceness 0: Ray starts workers at 15, which lets any other busy process starve the training actors.
#   event_stats off, task_events_report_interval_ms 0: per-event timing and task-state reports, read by the
#       dashboard (not started here) and the state API; together they were a third of an idle cluster's CPU.
_LOCAL_SYSTEM_CONFIG: dict[str, Any] = {"worker_niceness": 0, "event_stats": False, "task_events_report_interval_ms": 0}


def local_system_config(environ: Any) -> dict[str, Any]:
    """The ``_system_config`` of a local cluster: ours, less what the environment sets (``RAY_<name>``)."""
    return {key: value for key, value in _LOCAL_SYSTEM_CONFIG.items() if f"RAY_{key}" not in environ}


def _connect(groups: list[DeviceGroup], name: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if name:
        kwargs["namespace"] = name
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
        return
    num_cpus = _local_num_cpus(groups)
    logger.info("starting a local Ray cluster (num_cpus=%s)", num_cpus if num_cpus is not None else "auto")
    # address='local': always a cluster of our own; without it ray.init joins whatever cluster another process on
    # this machine happens to run (and then refuses num_cpus)
    system = local_system_config(os.environ)
    if system:
        kwargs["_system_config"] = system
    ray.init(address="local", num_cpus=num_cpus, **kwargs)
    _cluster.started_here = True


def _check_fits(groups: list[DeviceGroup]) -> None:
    """Fail with asked-vs-available numbers when the groups cannot all be reserved."""
    import ray

    total = ray.cluster_resources()
    available: defaultdict[str, float] = defaultdict(float, ray.available_resources())
    for placement in _cluster.groups.values():
        # what this job holds now is released before the new groups are reserved
        available[placement.resource] += placement.per_rank * placement.num_ranks
    asked: defaultdict[str, float] = defaultdict(float)  # resources are fractional (0.5 GPU)
    for group in groups:
        resource, per_rank = _resource_of(group)
        asked[resource] += per_rank * group.num_ranks
    problems = []
    for resource, need in asked.items():
        have = available.get(resource, 0.0)
        if need > have + 1e-9:
            names = ", ".join(
                f"{g.name!r} ({g.num_ranks} rank(s) x {_resource_of(g)[1]:g})"
                for g in groups
                if _resource_of(g)[0] == resource
            )
            problems.append(
                f"{need:g} {resource} asked by DeviceGroup {names}, but the Ray cluster has {have:g} available "
                f"({total.get(resource, 0.0):g} in total)"
            )
    if problems:
        hint = (
            "lower the groups' ranks, add nodes to the cluster (RAY_ADDRESS), or, for a local cluster, "
            "set TWINKLE_RAY_NUM_CPUS"
        )
        raise ClusterResourceError("; ".join(problems) + f"; {hint}")


def _reserve(group: DeviceGroup, timeout: float) -> GroupPlacement:
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    resource, per_rank = _resource_of(group)
    bundles = [{resource: per_rank} for _ in range(group.num_ranks)]
    pg = placement_group(bundles, strategy="PACK", name=f"twinkle-{group.name}")
    if not pg.wait(timeout_seconds=timeout):
        remove_placement_group(pg)
        raise ClusterResourceError(
            f"DeviceGroup {group.name!r} asked for {group.num_ranks} bundle(s) of {per_rank:g} {resource} and was "
            f"not placed within {timeout:g}s (available now: {ray.available_resources().get(resource, 0.0):g} "
            f"{resource}); free the resources or raise TWINKLE_RAY_PG_TIMEOUT"
        )
    table = placement_group_table(pg)
    nodes = table.get("bundles_to_node_id", {})
    return GroupPlacement(
        group=group,
        placement_group=pg,
        resource=resource,
        per_rank=per_rank,
        bundle_nodes=[str(nodes.get(i, "")) for i in range(group.num_ranks)],
    )


def _release_groups() -> None:
    from ray.util.placement_group import remove_placement_group

    for placement in _cluster.groups.values():
        with contextlib.suppress(Exception):  # the cluster may already be gone
            remove_placement_group(placement.placement_group)
    _cluster.groups.clear()


def init_ray(
    groups: list[DeviceGroup],
    nproc_per_node: int = 8,
    global_device_mesh: Any = None,
    seed: int = 42,
    ncpu_proc_per_node: int = 8,
    name: str | None = None,
    full_determinism: bool = False,
) -> None:
    """Connect to (or start) Ray and reserve one placement group per DeviceGroup.

    Calling it again (a second ``initialize``) releases the groups reserved before and reserves the new ones.

    Args:
        groups: the job's DeviceGroups; names must be unique.
        nproc_per_node: accelerators per node (kept for placement reports).
        global_device_mesh: the mesh ``'all'`` components get by default.
        seed: the seed every worker passes to ``twinkle.initialize``.
        ncpu_proc_per_node: CPU worker processes per node (kept for placement reports).
        name: the Ray namespace, when this call connects to or starts the cluster.
        full_determinism: every worker forces deterministic torch kernels.

    Raises:
        ConfigError: no groups, or repeated group names.
        ClusterResourceError: a group the cluster cannot hold (asked vs available in the message).
    """
    if not groups:
        raise ConfigError("Ray mode needs at least one DeviceGroup, e.g. groups=[DeviceGroup('default', 2, 'cpu')]")
    bad = [g for g in groups if not isinstance(g, DeviceGroup)]
    if bad:
        raise ConfigError(f"groups must be DeviceGroup objects, got {bad!r}")
    repeated = [name for name, count in Counter(g.name for g in groups).items() if count > 1]
    if repeated:
        raise ConfigError(f"DeviceGroup names must be unique; repeated: {', '.join(repeated)}")

    _connect(groups, name)
    register_tensor_serializer()
    _check_fits(groups)
    _release_groups()
    timeout = float(os.environ.get("TWINKLE_RAY_PG_TIMEOUT", "60"))
    try:
        for group in groups:
            _cluster.groups[group.name] = _reserve(group, timeout)
    except BaseException:
        _release_groups()
        raise
    _cluster.seed = seed
    _cluster.nproc_per_node = nproc_per_node
    _cluster.ncpu_proc_per_node = ncpu_proc_per_node
    _cluster.global_mesh = global_device_mesh
    _cluster.options = {"full_determinism": bool(full_determinism)}
    logger.info(
        "Ray mode: %s", ", ".join(f"{p.group.name}={p.num_ranks}x{p.per_rank:g}{p.resource}" for p in
                                  _cluster.groups.values())
    )


def get_global_device_mesh() -> Any:
    """The mesh given to ``initialize(mode='ray', global_device_mesh=...)`` (what ``'all'`` components get)."""
    return _cluster.global_mesh


def get_placement(name: str) -> GroupPlacement:
    """The reservation of a DeviceGroup by name.

    Raises:
        ConfigError: Ray mode is not initialised, or no group has that name (the message lists the known ones).
    """
    if not _cluster.groups:
        raise ConfigError(
            f"remote_group={name!r} needs Ray mode: call twinkle.initialize(mode='ray', groups=[DeviceGroup(...)]) "
            f"first"
        )
    if name not in _cluster.groups:
        raise ConfigError(f"unknown remote_group {name!r}; the DeviceGroups are: {', '.join(_cluster.groups)}")
    return _cluster.groups[name]


def cluster_settings() -> _Cluster:
    return _cluster


def get_device_placement() -> str:
    """A table of the groups and where Ray placed their ranks."""
    lines = [f"mode: ray (nproc_per_node={_cluster.nproc_per_node}, ncpu_proc_per_node={_cluster.ncpu_proc_per_node})"]
    for placement in _cluster.groups.values():
        nodes = Counter(placement.bundle_nodes)
        where = ", ".join(f"{node[:8]}: {count}" for node, count in nodes.items())
        lines.append(
            f"group {placement.group.name!r}: {placement.num_ranks} rank(s) x {placement.per_rank:g} "
            f"{placement.resource} on {len(nodes)} node(s) ({where})"
        )
    mesh = _cluster.global_mesh
    if mesh is not None:
        lines.append(f"global mesh: {mesh!r} world_size={mesh.world_size} data_world_size={mesh.data_world_size}")
    return "\n".join(lines)


def shutdown_ray() -> None:
    """Release the placement groups, and stop Ray if ``init_ray`` started it."""
    import ray

    if not ray.is_initialized():
        _cluster.groups.clear()
        return
    _release_groups()
    if _cluster.started_here:
        ray.shutdown()
        _cluster.started_here = False

