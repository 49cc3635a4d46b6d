"""Where a job is matched to a worker: pure functions over DeviceGroups, no database, no I/O.

A worker offers DeviceGroups. An offered group is either a *pool* shared by count (``pooled``: a job takes as
many of its devices as it needs, and several jobs run side by side on disjoint devices) or a static *slot* that
runs one job at a time on all its devices (what a worker that says nothing offers). A job requests one or more
DeviceGroups; it fits a worker when every requested group fits free devices of one offered group: same device
family (``cuda``/``GPU`` -> gpu, ``cpu``/``CPU`` -> cpu, ``npu``; ``any`` fits every family), at least as many free
devices (a static slot: as many ranks, and idle), at least ``min_memory_gb`` per device. Two requested groups may
share one pool, never one static slot. The planner names the devices too (the lowest free indexes of the pool),
so the worker gives each attempt its own (``CUDA_VISIBLE_DEVICES``, the torchrun world size, Ray's resources).

Isolation: a worker declares how it isolates jobs (``bwrap``, ``container`` or ``none``). A job runs only on a
sandboxed worker (anything but ``none``) unless its owner opted out (``allow_unsandboxed`` in its request); a job
held for that reason says so and names the opt-out.

Order (``plan``): users take turns (round robin, the user whose oldest queued job is oldest goes first);
within a user jobs go strictly first in, first out, except that a job no live worker could ever run is held
(with its reason) and does not block the user's later jobs. Among free slots and pools the one with the fewest
free devices that fits wins (best fit), so a half-used pool fills up before an idle one is cut into, and big
slots stay free for big jobs.

Trust (``scheduler.services.validation``): a replay job (``trusted_only``) goes only to a trusted worker, and no
job goes to a worker in its ``avoid`` set (the donor a replay checks; workers whose attempt of it failed a spot
check). Such jobs are rare and take the scanning path.

Canary (``scheduler.services.canary``): a worker pending its known-answer canary is ``reserved``: it gets only jobs
addressed to it (``only``, its canary), never a user's; a job addressed to a busy or offline worker waits without
holding up its owner's (the platform's) other jobs.

Speed: single-group jobs (the usual case) look their slot up in an index keyed by shape (family, free count,
memory; a pool is re-filed under its remaining free count after each take) instead of scanning workers, so a
round over 10,000 jobs and 1,000 workers is milliseconds.
"""

from __future__ import annotations

import bisect
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FAMILIES = {"cuda": "cuda", "gpu": "cuda", "npu": "npu", "cpu": "cpu", "any": "any"}


def device_family(device_type: str) -> str:
    """``cuda``/``GPU`` -> ``cuda``; ``cpu``/``CPU`` -> ``cpu``; ``npu``; ``any``. Unknown names stay as given."""
    key = (device_type or "").strip().lower()
    return FAMILIES.get(key, key)


@dataclass(frozen=True)
class Offer:
    """One DeviceGroup a worker offers (one slot)."""

    family: str
    ranks: int
    memory_gb: float | None = None
    device_model: str | None = None
    name: str = "default"
    pooled: bool = False  # shared by count; else a static slot (one job at a time)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Offer:
        return cls(
            family=device_family(str(d.get("device_type", "cpu"))),
            ranks=int(d.get("ranks", 1)),
            memory_gb=None if d.get("memory_gb") is None else float(d["memory_gb"]),
            device_model=d.get("device_model"),
            name=str(d.get("name", "default")),
            pooled=bool(d.get("pooled", False)),
        )


@dataclass(frozen=True)
class Need:
    """One DeviceGroup a job requests."""

    family: str
    ranks: int
    min_memory_gb: float = 0.0
    name: str = "default"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Need:
        return cls(
            family=device_family(str(d.get("device_type", "any"))),
            ranks=int(d.get("ranks", 1)),
            min_memory_gb=float(d.get("min_memory_gb") or 0.0),
            name=str(d.get("name", "default")),
        )

    def describe(self) -> str:
        family = "devices of any type" if self.family == "any" else f"{self.family} ranks"
        text = f"{self.ranks} {family}" if self.family != "any" else f"{self.ranks} ranks (any device type)"
        if self.min_memory_gb:
            text += f" with >= {self.min_memory_gb:g} GB each"
        return text


def needs_from_request(request: Mapping[str, Any]) -> tuple[Need, ...]:
    groups = request.get("device_groups") or [{"name": "default", "ranks": 1, "device_type": "any"}]
    return tuple(Need.from_dict(g) for g in groups)


def kind_fits(offer: Offer, need: Need) -> bool:
    """Device family and memory per device; the count is checked against what is free."""
    if need.family != "any" and offer.family != need.family:
        return False
    return need.min_memory_gb <= 0 or (offer.memory_gb is not None and offer.memory_gb >= need.min_memory_gb)


def offer_fits(offer: Offer, need: Need) -> bool:
    """Whether the idle offered group could run ``need``."""
    return kind_fits(offer, need) and offer.ranks >= need.ranks


def fit_groups(
    offers: Sequence[Offer], needs: Sequence[Need], free: Iterable[int] | Mapping[int, int] | None = None
) -> tuple[int, ...] | None:
    """Give each need an offered group with enough free devices (best fit, backtracking); ``None`` if impossible.

    ``free``: the idle groups (indexes), or the free device count of each group with any free; ``None``: all
    idle. A static slot is taken whole by one need; a pool is shared by the needs while devices remain.
    Returns the group index chosen for each need, in the order of ``needs``.
    """
    if free is None:
        cap = {i: o.ranks for i, o in enumerate(offers)}
    elif isinstance(free, Mapping):
        cap = {i: n for i, n in free.items() if n > 0}
    else:
        cap = {i: offers[i].ranks for i in free}
    # smallest free count first: best fit
    candidates = sorted(cap, key=lambda i: (cap[i], offers[i].memory_gb or 0.0, i))
    # Hardest needs first keeps the backtracking shallow.
    order = sorted(range(len(needs)), key=lambda i: (-needs[i].ranks, -needs[i].min_memory_gb))
    chosen: dict[int, int] = {}

    def place(k: int) -> bool:
        if k == len(order):
            return True
        need = needs[order[k]]
        for slot in candidates:
            offer = offers[slot]
            if cap[slot] < need.ranks or not kind_fits(offer, need):
                continue
            if not offer.pooled and cap[slot] != offer.ranks:
                continue  # a static slot is taken whole, once
            take = need.ranks if offer.pooled else cap[slot]
            cap[slot] -= take
            chosen[order[k]] = slot
            if place(k + 1):
                return True
            cap[slot] += take
        return False

    if not place(0):
        return None
    return tuple(chosen[i] for i in range(len(needs)))


def held_devices(slots: Any, offers: Sequence[Offer]) -> list[tuple[int, tuple[int, ...]]]:
    """What a job row's ``slots`` holds, as ``(group index, device indexes)``.

    Stored as ``[{"slot": i, "devices": [...]}, ...]``; a bare index (rows written before pools) holds the whole
    group. Entries naming a group the worker no longer offers are dropped.
    """
    out: list[tuple[int, tuple[int, ...]]] = []
    for entry in slots or ():
        if isinstance(entry, Mapping):
            idx, devices = entry.get("slot"), entry.get("devices")
        else:
            idx, devices = entry, None
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(offers):
            continue
        if devices is None:
            devices = range(offers[idx].ranks)
        out.append((idx, tuple(int(d) for d in devices)))
    return out


ISOLATIONS = ("bwrap", "container", "none")


def is_sandboxed(isolation: str | None) -> bool:
    """A worker that declared no isolation (one older than the declaration) counts as ``none``."""
    return (isolation or "none") != "none"


@dataclass
class WorkerView:
    """A worker as the matcher sees it: its offers, which slots are busy and which pooled devices are in use,
    whether it runs jobs in a sandbox."""

    worker_id: str
    offers: tuple[Offer, ...]
    live: bool = True
    busy: frozenset[int] = frozenset()  # groups wholly taken
    sandboxed: bool = True
    trusted: bool = False  # may run replays (a platform pool, or a donor of high reputation)
    in_use: Mapping[int, frozenset[int]] = field(default_factory=dict)  # group -> device indexes held by jobs
    reserved: bool = False  # pending its canary: only jobs addressed to it (``QueuedJob.only``)

    def free_devices(self, slot: int) -> list[int]:
        """The devices of offered group ``slot`` a new job may take (a static slot: all of them, or none)."""
        offer = self.offers[slot]
        used = self.in_use.get(slot, frozenset())
        if slot in self.busy or (used and not offer.pooled):
            return []
        return [i for i in range(offer.ranks) if i not in used]


@dataclass
class QueuedJob:
    job_id: str
    user_id: str
    needs: tuple[Need, ...]
    allow_unsandboxed: bool = False  # the owner accepts a worker without a sandbox (a trusted pool)
    trusted_only: bool = False  # a replay: only a trusted worker may run it
    avoid: frozenset[str] = frozenset()  # workers it must not go to (the donor a replay checks; failed spot checks)
    only: str | None = None  # the one worker it may go to (a canary)


@dataclass
class Assignment:
    job_id: str
    worker_id: str
    slots: tuple[int, ...]  # the offered group of each requested group
    devices: tuple[tuple[int, ...], ...] = ()  # the device indexes within it, per requested group

    def stored_slots(self) -> list[dict[str, Any]]:
        """The job row's ``slots`` (read back by ``held_devices``)."""
        return [{"slot": s, "devices": list(d)} for s, d in zip(self.slots, self.devices, strict=True)]


@dataclass
class Plan:
    assignments: list[Assignment] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # job_id -> why it waits (every unplaced job)


class ShapeCatalog:
    """What the registered workers could run if idle; answers "could this ever fit?" with a reason."""

    def __init__(self, workers: Iterable[WorkerView]) -> None:
        # (shape, sandboxed) -> [live, offline]
        self._shapes: dict[tuple[tuple[Offer, ...], bool], list[int]] = defaultdict(lambda: [0, 0])
        for w in workers:
            # device model and group name do not change what fits: leave them out so equal shapes share a key
            offers = (Offer(o.family, o.ranks, o.memory_gb, pooled=o.pooled) for o in w.offers)
            shape = tuple(sorted(offers, key=lambda o: (o.family, o.ranks, o.memory_gb or 0.0, o.pooled)))
            self._shapes[(shape, w.sandboxed)][0 if w.live else 1] += 1
        self._cache: dict[tuple[tuple[Need, ...], bool], tuple[int, int]] = {}

    def counts(self, needs: tuple[Need, ...], allow_unsandboxed: bool = False) -> tuple[int, int]:
        """(live workers, offline workers) whose whole offer could run ``needs`` (sandboxed ones only, unless
        ``allow_unsandboxed``)."""
        hit = self._cache.get((needs, allow_unsandboxed))
        if hit is None:
            live = offline = 0
            for (shape, sandboxed), (n_live, n_off) in self._shapes.items():
                if (sandboxed or allow_unsandboxed) and fit_groups(shape, needs) is not None:
                    live += n_live
                    offline += n_off
            hit = self._cache[(needs, allow_unsandboxed)] = (live, offline)
        return hit

    def hold_reason(self, needs: tuple[Need, ...], allow_unsandboxed: bool = False) -> str | None:
        """Why no live worker could ever run ``needs``; ``None`` when one could."""
        live, offline = self.counts(needs, allow_unsandboxed)
        if live:
            return None
        wanted = needs[0].describe() if len(needs) == 1 else "; ".join(n.describe() for n in needs)
        if not allow_unsandboxed:
            any_live, any_offline = self.counts(needs, allow_unsandboxed=True)
            bare_live, bare_offline = any_live - live, any_offline - offline  # workers with isolation 'none'
            if bare_live or (bare_offline and not offline):
                state = "live" if bare_live else "offline"
                return (
                    f"held: no sandboxed worker offers {wanted}; {bare_live or bare_offline} {state} worker(s) "
                    f"without a sandbox (isolation 'none') could run it. Jobs run only in a sandbox unless their "
                    f"owner opts out: resubmit with --allow-unsandboxed (web UI: 'allow a worker without a "
                    f"sandbox'; API: allow_unsandboxed=true) if you trust that pool"
                )
        if offline:
            return f"held: only offline workers ({offline}) offer {wanted}; waiting for one to come back"
        if len(needs) == 1:
            return f"held: no registered worker offers {wanted}"
        return f"held: no registered worker offers all of {wanted} as separate device groups or from one pool"

    def busy_reason(self, needs: tuple[Need, ...], allow_unsandboxed: bool = False) -> str:
        live, _ = self.counts(needs, allow_unsandboxed)
        return f"waiting for a free worker: {live} live worker(s) can run it, all busy"


class _FreeSlots:
    """Free devices indexed by shape (free count, memory), so a single-group job finds its best fit without
    scanning workers. A static slot is filed under its full rank count while idle; a pool under its free count,
    and again under the smaller count after each take."""

    def __init__(self, workers: Iterable[WorkerView]) -> None:
        self.offers: dict[str, tuple[Offer, ...]] = {}
        self.devs: dict[str, dict[int, list[int]]] = {}  # worker -> group -> free device indexes (ascending)
        self.sandboxed: dict[str, bool] = {}
        self.trusted: dict[str, bool] = {}
        self.reserved: dict[str, bool] = {}
        # Buckets are keyed by (family, sandboxed), so a job that needs a sandbox never even looks at the others.
        buckets: dict[tuple[str, bool], dict[tuple[int, float], list[tuple[str, int]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.total = 0  # free devices in all
        for w in workers:
            if not w.live:
                continue
            free = {i: devs for i in range(len(w.offers)) if (devs := w.free_devices(i))}
            if not free:
                continue
            self.offers[w.worker_id] = w.offers
            self.devs[w.worker_id] = free
            self.sandboxed[w.worker_id] = w.sandboxed
            self.trusted[w.worker_id] = w.trusted
            self.reserved[w.worker_id] = w.reserved
            self.total += sum(len(d) for d in free.values())
            if w.reserved:
                continue  # kept out of the index: only the scan of a job addressed to it finds it
            for i in sorted(free, reverse=True):  # popped from the end: lowest slot first
                o = w.offers[i]
                buckets[(o.family, w.sandboxed)][(len(free[i]), o.memory_gb or 0.0)].append((w.worker_id, i))
        # (family, sandboxed) -> sorted shapes, and shape -> stack of (worker, slot); stale entries are skipped lazily.
        self.shapes = {key: sorted(b) for key, b in buckets.items()}
        self.stacks = {key: dict(b) for key, b in buckets.items()}

    def take_single(self, need: Need, allow_unsandboxed: bool = False) -> tuple[str, int, tuple[int, ...]] | None:
        families = [
            key for key in self.shapes
            if (need.family == "any" or key[0] == need.family) and (key[1] or allow_unsandboxed)
        ]
        best: tuple[tuple[int, float], tuple[str, bool]] | None = None
        for fam in families:
            shapes = self.shapes.get(fam)
            if not shapes:
                continue
            start = bisect.bisect_left(shapes, (need.ranks, float("-inf")))
            for shape in shapes[start:]:
                if need.min_memory_gb > 0 and shape[1] < need.min_memory_gb:
                    continue
                if self._peek(fam, shape) is not None:
                    if best is None or shape < best[0]:
                        best = (shape, fam)
                    break
        if best is None:
            return None
        shape, fam = best
        wid, slot = self.stacks[fam][shape].pop()
        devices = self._use(wid, ((slot, need.ranks),))[0]
        rest = len(self.devs.get(wid, {}).get(slot, ()))
        if rest:  # a pool with devices left: file it again under its new free count
            key = (rest, shape[1])
            stack = self.stacks[fam].get(key)
            if stack is None:
                stack = self.stacks[fam][key] = []
                bisect.insort(self.shapes[fam], key)
            stack.append((wid, slot))
        return wid, slot, devices

    def _peek(self, fam: tuple[str, bool], shape: tuple[int, float]) -> tuple[str, int] | None:
        stack = self.stacks[fam][shape]
        while stack:
            wid, slot = stack[-1]
            if len(self.devs.get(wid, {}).get(slot, ())) == shape[0]:
                return wid, slot
            stack.pop()
        return None

    def take_multi(
        self, needs: tuple[Need, ...], allow_unsandboxed: bool = False, *, trusted_only: bool = False,
        avoid: frozenset[str] = frozenset(), only: str | None = None,
    ) -> tuple[str, tuple[int, ...], tuple[tuple[int, ...], ...]] | None:
        """Scan the workers for the least wasteful fit; also the path of jobs restricted to some workers."""
        best: tuple[tuple[Any, ...], str, tuple[int, ...]] | None = None
        wanted = sum(n.ranks for n in needs)
        candidates = self.devs.items() if only is None else [(only, self.devs[only])] if only in self.devs else []
        for wid, free in candidates:
            if not (self.sandboxed[wid] or allow_unsandboxed):
                continue
            if self.reserved[wid] and wid != only:
                continue
            if wid in avoid or (trusted_only and not self.trusted[wid]):
                continue
            if sum(len(d) for d in free.values()) < wanted:
                continue
            slots = fit_groups(self.offers[wid], needs, {i: len(d) for i, d in free.items()})
            if slots is None:
                continue
            waste = (sum(len(free[s]) for s in set(slots)), len(free))
            if best is None or waste < best[0]:
                best = (waste, wid, slots)
        if best is None:
            return None
        _, wid, slots = best
        offers = self.offers[wid]
        # a static slot is taken whole; a pool gives each need its count
        takes = tuple(
            (s, n.ranks if offers[s].pooled else len(self.devs[wid][s])) for s, n in zip(slots, needs, strict=True)
        )
        return wid, slots, self._use(wid, takes)

    def _use(self, wid: str, takes: tuple[tuple[int, int], ...]) -> tuple[tuple[int, ...], ...]:
        """Take ``count`` devices (the lowest free indexes) of each ``(group, count)``; a static slot all."""
        free = self.devs[wid]
        out = []
        for slot, count in takes:
            devs = free[slot]
            if not self.offers[wid][slot].pooled:
                count = len(devs)
            out.append(tuple(devs[:count]))
            del devs[:count]
            self.total -= count
            if not devs:
                del free[slot]
        if not free:
            del self.devs[wid]
        return tuple(out)


def plan(
    workers: Sequence[WorkerView], jobs: Sequence[QueuedJob], user_priority: Mapping[str, Any] | None = None
) -> Plan:
    """Decide which queued jobs go where in this round. ``jobs`` must be in submission order.

    ``user_priority`` (user -> sortable key, lower first) carries fairness across rounds, e.g.
    (running jobs, last time served); users without a key go first, then by their oldest queued job.
    Every job not placed gets a reason in ``Plan.reasons``.
    """
    result = Plan()
    catalog = ShapeCatalog(workers)
    pool = _FreeSlots(workers)

    queues: dict[str, deque[QueuedJob]] = {}
    for job in jobs:
        queues.setdefault(job.user_id, deque()).append(job)
    turn = deque(queues)  # dict order = order of each user's oldest job
    if user_priority:
        first = {u: i for i, u in enumerate(turn)}
        turn = deque(sorted(turn, key=lambda u: (u in user_priority, user_priority.get(u, ()), first[u])))

    while turn:
        user = turn.popleft()
        q = queues[user]
        while q:
            job = q.popleft()
            hold = catalog.hold_reason(job.needs, job.allow_unsandboxed)
            if hold is not None:
                result.reasons[job.job_id] = hold
                continue  # held jobs never block the user's later jobs
            placed: tuple[str, tuple[int, ...], tuple[tuple[int, ...], ...]] | None = None
            if pool.total >= sum(n.ranks for n in job.needs):
                if job.trusted_only or job.avoid or job.only:
                    placed = pool.take_multi(
                        job.needs, job.allow_unsandboxed, trusted_only=job.trusted_only, avoid=job.avoid,
                        only=job.only,
                    )
                elif len(job.needs) == 1:
                    hit = pool.take_single(job.needs[0], job.allow_unsandboxed)
                    placed = None if hit is None else (hit[0], (hit[1],), (hit[2],))
                else:
                    placed = pool.take_multi(job.needs, job.allow_unsandboxed)
            if placed is None and job.trusted_only:  # the platform's replay never holds up the owner's jobs
                result.reasons[job.job_id] = "waiting for a free trusted worker"
                continue
            if placed is None and job.only:  # nor does a canary waiting for its one worker
                result.reasons[job.job_id] = f"waiting for worker {job.only} (free and live)"
                continue
            if placed is None:
                result.reasons[job.job_id] = catalog.busy_reason(job.needs, job.allow_unsandboxed)
                blocked = f"waiting behind job {job.job_id} (each user's jobs start in submission order)"
                for later in q:
                    result.reasons[later.job_id] = catalog.hold_reason(later.needs, later.allow_unsandboxed) or blocked
                q.clear()
                break
            result.assignments.append(Assignment(job.job_id, placed[0], placed[1], placed[2]))
            if q:
                turn.append(user)
            break
    return result
