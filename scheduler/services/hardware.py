"""Hardware claims are checked, not believed: a worker's offered DeviceGroups must fit in what its probe found.

Rules (each violation is listed, all at once, in one 422):

- a probe is required (``probe_missing``): without one every claim is a guess;
- per device family (``cuda``, ``cpu``, ``npu``), the ranks offered over all groups are at most the devices the
  probe counted (CPU: usable cores) (``claim_beyond_probe``);
- a group's ``memory_gb`` is at most the smallest probed device of its family, plus ``MEMORY_SLACK`` (drivers and
  tools round differently);
- a group's ``device_model``, when given, names a probed model of its family (case-insensitive, either contains
  the other: "H100" matches "NVIDIA H100 80GB HBM3");
- all offered ranks together are at most ``MAX_RANKS_PER_WORKER`` (``too_many_ranks``), whatever the probe says:
  a sybil can fake a probe, not the cap.

This is defence in depth: a donor can send any probe it likes. Replays (``scheduler.services.validation``) catch
a worker that does not run what it claims; the probe keeps honest mistakes and lazy sybils out of the matcher.
"""

from __future__ import annotations

from collections import defaultdict

from contract.errors import ErrorCode
from contract.workers import HardwareProbe, OfferedGroup
from scheduler.errors import InvalidRequest
from scheduler.services.matching import device_family

MEMORY_SLACK = 1.05


def _models_match(claimed: str, probed: str) -> bool:
    a, b = claimed.strip().casefold(), probed.strip().casefold()
    return bool(a) and (a in b or b in a)


def check_claim(groups: list[OfferedGroup], probe: HardwareProbe | None, *, max_ranks: int) -> None:
    """Raise ``InvalidRequest`` (422) naming every offered group beyond the probe, or the cap."""
    total = sum(g.ranks for g in groups)
    if total > max_ranks:
        raise InvalidRequest(
            f"the worker offers {total} ranks; this platform allows at most {max_ranks} per worker "
            f"(TWINKLE_SCHEDULER_MAX_RANKS_PER_WORKER). Offer fewer (TWINKLE_WORKER_RANKS) or run several workers",
            code=ErrorCode.TOO_MANY_RANKS,
            fields={"device_groups": f"{total} ranks > {max_ranks}"},
        )
    if probe is None:
        raise InvalidRequest(
            "registration needs the worker's hardware probe ('probe'); upgrade twinkle-worker, which sends it",
            code=ErrorCode.PROBE_MISSING,
            fields={"probe": "required"},
        )
    counts: dict[str, int] = defaultdict(int)
    memory: dict[str, list[float]] = defaultdict(list)
    models: dict[str, list[str]] = defaultdict(list)
    for d in probe.devices:
        fam = device_family(d.device_type)
        counts[fam] += d.count
        if d.memory_gb is not None:
            memory[fam].append(d.memory_gb)
        if d.device_model:
            models[fam].append(d.device_model)
    problems: dict[str, str] = {}
    offered: dict[str, int] = defaultdict(int)
    for g in groups:
        offered[device_family(g.device_type)] += g.ranks
    for fam, ranks in offered.items():
        if ranks > counts.get(fam, 0):
            problems[f"device_groups.{fam}"] = (
                f"{ranks} {fam} ranks offered, the probe found {counts.get(fam, 0)} {fam} device(s)"
            )
    for i, g in enumerate(groups):
        fam = device_family(g.device_type)
        if g.memory_gb is not None and memory.get(fam) and g.memory_gb > min(memory[fam]) * MEMORY_SLACK:
            problems[f"device_groups.{i}.memory_gb"] = (
                f"{g.memory_gb:g} GB offered per device, the probe found {min(memory[fam]):g} GB"
            )
        if g.device_model and models.get(fam) and not any(_models_match(g.device_model, m) for m in models[fam]):
            problems[f"device_groups.{i}.device_model"] = (
                f"{g.device_model!r} offered, the probe found {', '.join(sorted(set(models[fam])))}"
            )
    if problems:
        raise InvalidRequest(
            "the offered device groups go beyond the hardware probe: " + "; ".join(problems.values())
            + ". Offer what the machine has (unset TWINKLE_WORKER_RANKS / DEVICE_TYPE / MEMORY_GB / DEVICE_MODEL)",
            code=ErrorCode.CLAIM_BEYOND_PROBE,
            fields=problems,
        )
