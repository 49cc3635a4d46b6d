"""``DeviceGroup`` (the resources a job needs) and ``DeviceMesh`` (how a component is laid out on them).

A mesh is an ndarray of global ranks with named dimensions. ``from_sizes`` always builds the dimensions in the
order fsdp, pp, dp, cp, tp (only those given; dp always), with the last dimension varying fastest, so tensor
parallel peers are neighbouring ranks. Data sharding follows from the mesh: every (dp, fsdp) coordinate is one data
rank, except that Ulysses sequence parallelism folds ``ulysses_size`` fsdp ranks onto one data rank.

>>> mesh = DeviceMesh.from_sizes(fsdp_size=4, dp_size=2)
>>> mesh.mesh_dim_names, mesh.world_size, mesh.data_world_size
(('fsdp', 'dp'), 8, 8)
>>> mesh.get_slice(10, rank=0), mesh.get_slice(10, rank=7)
(slice(0, 2, None), slice(9, 10, None))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinkle.errors import ConfigError

__all__ = ["MESH_DIM_NAMES", "MESH_DIM_ORDER", "DeviceGroup", "DeviceMesh"]

MESH_DIM_NAMES = ("dp", "fsdp", "tp", "pp", "cp", "ep", "ep_fsdp")
MESH_DIM_ORDER = ("fsdp", "pp", "dp", "cp", "tp")
_DEVICE_TYPES = {"cuda", "gpu", "npu", "cpu"}


@dataclass
class DeviceGroup:
    """A named group of ranks a job needs: ``DeviceGroup(name='default', ranks=8, device_type='cuda')``.

    Args:
        name: the group's name; components are placed on it with ``remote_group=name``.
        ranks: a list of global ranks, or an int N meaning the next N ranks.
        device_type: ``'cuda'``, ``'GPU'``, ``'npu'`` or ``'CPU'`` (case does not matter).
        gpus_per_worker: devices each worker process holds.
        visible_devices: an explicit device list (e.g. ``'0,1'``) to pin the group to.
    """

    name: str
    ranks: list[int] | int
    device_type: str = "cuda"
    gpus_per_worker: int = 1
    visible_devices: str | list[int] | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"DeviceGroup needs a non-empty name, got {self.name!r}")
        if str(self.device_type).lower() not in _DEVICE_TYPES:
            raise ConfigError(
                f"DeviceGroup {self.name!r}: unknown device_type {self.device_type!r}; use one of cuda, GPU, npu, CPU"
            )
        if isinstance(self.ranks, bool) or not isinstance(self.ranks, (int, list, tuple, range)):
            raise ConfigError(f"DeviceGroup {self.name!r}: ranks must be an int or a list of ints, got {self.ranks!r}")
        if isinstance(self.ranks, int) and self.ranks < 1:
            raise ConfigError(f"DeviceGroup {self.name!r}: ranks must be at least 1, got {self.ranks}")
        if not isinstance(self.ranks, int):
            self.ranks = [int(r) for r in self.ranks]
            if not self.ranks:
                raise ConfigError(f"DeviceGroup {self.name!r}: ranks is empty; give a count or a list of ranks")
        if self.gpus_per_worker < 1:
            raise ConfigError(f"DeviceGroup {self.name!r}: gpus_per_worker must be >= 1, got {self.gpus_per_worker}")

    @property
    def num_ranks(self) -> int:
        return self.ranks if isinstance(self.ranks, int) else len(self.ranks)

    @property
    def is_cpu(self) -> bool:
        return str(self.device_type).lower() == "cpu"


def _current_rank() -> int:
    """``Platform.get_rank()``: the launcher's ``RANK``, -1 when unset. As upstream, the one source of the rank:
    ``torch.distributed`` is read only to create process groups (a group over a subset of ranks has its own
    numbering, which must not leak into the mesh coordinates)."""
    from twinkle.utils.platform import Platform

    return Platform.get_rank()


@dataclass(eq=False, repr=False)
class DeviceMesh:
    """The layout of a component over global ranks.

    Args:
        mesh: an ndarray of global ranks, one axis per name in ``mesh_dim_names``.
        mesh_dim_names: the axis names, each one of dp, fsdp, tp, pp, cp, ep, ep_fsdp.
        ep_size / etp_size / ep_fsdp_size: expert-parallel sizes (not mesh axes).
        vpp_size: virtual pipeline stages (not a mesh axis).
        ulysses_size: the Ulysses sequence-parallel size, carved out of the fsdp/dp ranks.
        sequence_parallel: Megatron-style sequence parallelism with tp.
        device_type: the device the ranks use.
    """

    mesh: Any
    mesh_dim_names: tuple[str, ...] = ("dp",)
    ep_size: int | None = None
    etp_size: int = 1
    ep_fsdp_size: int | None = None
    vpp_size: int | None = None
    ulysses_size: int | None = None
    sequence_parallel: bool = False
    device_type: str = "cuda"
    _rank: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.mesh = np.asarray(self.mesh, dtype=np.int64)
        self.mesh_dim_names = tuple(self.mesh_dim_names)
        bad = [d for d in self.mesh_dim_names if d not in MESH_DIM_NAMES]
        if bad:
            raise ConfigError(f"unknown mesh dimension(s) {bad}; allowed: {', '.join(MESH_DIM_NAMES)}")
        if len(set(self.mesh_dim_names)) != len(self.mesh_dim_names):
            raise ConfigError(f"mesh dimension names repeat: {self.mesh_dim_names}")
        if self.mesh.ndim != len(self.mesh_dim_names):
            raise ConfigError(
                f"mesh has {self.mesh.ndim} dimension(s) but {len(self.mesh_dim_names)} name(s) "
                f"{self.mesh_dim_names}; give one name per axis"
            )
        if self.ulysses_size is not None and self.ulysses_size > 1:
            dp_like = self._size_or_one("dp") * self._size_or_one("fsdp")
            if dp_like % self.ulysses_size:
                raise ConfigError(
                    f"ulysses_size={self.ulysses_size} must divide dp*fsdp={dp_like}; pick a divisor of it"
                )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_sizes(
        cls,
        *,
        world_size: int = 1,
        dp_size: int = 1,
        fsdp_size: int | None = None,
        tp_size: int | None = None,
        pp_size: int | None = None,
        ulysses_size: int | None = None,
        cp_size: int | None = None,
        ep_size: int | None = None,
        etp_size: int = 1,
        ep_fsdp_size: int | None = None,
        vpp_size: int | None = None,
        device_type: str = "cuda",
        sequence_parallel: bool = False,
    ) -> DeviceMesh:
        """Build a mesh over ``arange(world)`` with the dimensions fsdp, pp, dp, cp, tp (those given, dp always).

        ``world_size`` larger than the product of the sizes grows dp to fill it (it must divide evenly).
        """
        if dp_size is None:
            raise ConfigError("dp_size=None: give dp_size an int (1 when only other dimensions are used)")
        sizes = {"fsdp": fsdp_size, "pp": pp_size, "dp": dp_size, "cp": cp_size, "tp": tp_size}
        for name, size in sizes.items():
            if size is not None and (not isinstance(size, int) or size < 1):
                raise ConfigError(f"{name}_size must be a positive int, got {size!r}")
        product = int(np.prod([s for s in sizes.values() if s is not None]))
        if world_size > 1 and product != world_size:
            others = product // dp_size
            if dp_size == 1 and world_size % others == 0:
                sizes["dp"] = world_size // others
            else:
                raise ConfigError(
                    f"the mesh sizes multiply to {product} but world_size is {world_size}; make them agree "
                    f"(or leave dp_size out to let it fill world_size)"
                )
        names = tuple(n for n in MESH_DIM_ORDER if sizes[n] is not None)
        shape = tuple(int(sizes[n]) for n in names)  # type: ignore[arg-type]
        world = int(np.prod(shape))
        if ep_size is not None and ep_fsdp_size is None:
            if world % ep_size:
                raise ConfigError(f"ep_size={ep_size} must divide the world size {world}")
            ep_fsdp_size = world // ep_size
        return cls(
            mesh=np.arange(world).reshape(shape),
            mesh_dim_names=names,
            ep_size=ep_size,
            etp_size=etp_size,
            ep_fsdp_size=ep_fsdp_size,
            vpp_size=vpp_size,
            ulysses_size=ulysses_size,
            sequence_parallel=sequence_parallel,
            device_type=device_type,
        )

    def with_rank(self, rank: int) -> DeviceMesh:
        """A copy that answers the ``*_rank`` questions for ``rank`` instead of this process's rank."""
        import dataclasses

        return dataclasses.replace(self, _rank=rank)

    # ------------------------------------------------------------------ ranks and sizes

    @property
    def world_size(self) -> int:
        return int(self.mesh.size)

    @property
    def rank(self) -> int:
        """The global rank the ``*_rank`` properties answer for (this process's, unless ``with_rank`` was used)."""
        return _current_rank() if self._rank is None else self._rank

    def has_dim(self, name: str) -> bool:
        return name in self.mesh_dim_names

    def _size_or_one(self, name: str) -> int:
        return self.get_dim_size(name) or 1

    def get_dim_size(self, name: str) -> int:
        """The size of a dimension, 0 when the mesh has no such dimension."""
        if name not in self.mesh_dim_names:
            return 0
        return int(self.mesh.shape[self.mesh_dim_names.index(name)])

    def get_coord(self, rank: int | None = None) -> dict[str, int] | None:
        """The coordinates of a global rank, ``None`` when the rank is not in the mesh."""
        rank = self.rank if rank is None else rank
        hits = np.argwhere(self.mesh == rank)
        if len(hits) == 0:
            return None
        return {name: int(i) for name, i in zip(self.mesh_dim_names, hits[0], strict=True)}

    def get_dim_rank(self, name: str, rank: int | None = None) -> int | None:
        """The index of ``rank`` along a dimension; ``None`` when the dimension or the rank is absent."""
        coord = self.get_coord(rank)
        if coord is None or name not in coord:
            return None
        return coord[name]

    def get_dim_group_ranks(self, name: str, rank: int | None = None) -> list[int]:
        """The global ranks that share every coordinate with ``rank`` except along ``name`` (its process group)."""
        coord = self.get_coord(rank)
        if coord is None or name not in coord:
            return []
        index = tuple(slice(None) if d == name else coord[d] for d in self.mesh_dim_names)
        return [int(r) for r in np.ravel(self.mesh[index])]

    dp_rank = property(lambda self: self.get_dim_rank("dp"))
    fsdp_rank = property(lambda self: self.get_dim_rank("fsdp"))
    tp_rank = property(lambda self: self.get_dim_rank("tp"))
    pp_rank = property(lambda self: self.get_dim_rank("pp"))
    cp_rank = property(lambda self: self.get_dim_rank("cp"))
    ep_rank = property(lambda self: self.get_dim_rank("ep"))
    dp_world_size = property(lambda self: self.get_dim_size("dp"))
    fsdp_world_size = property(lambda self: self.get_dim_size("fsdp"))
    tp_world_size = property(lambda self: self.get_dim_size("tp"))
    pp_world_size = property(lambda self: self.get_dim_size("pp"))
    cp_world_size = property(lambda self: self.get_dim_size("cp"))
    ep_world_size = property(lambda self: self.get_dim_size("ep"))

    # ------------------------------------------------------------------ data sharding

    @property
    def _ulysses(self) -> int:
        return self.ulysses_size or 1

    @property
    def data_world_size(self) -> int:
        """How many distinct data shards the mesh consumes: dp * fsdp // ulysses."""
        return self._size_or_one("dp") * self._size_or_one("fsdp") // self._ulysses

    def get_data_rank(self, rank: int | None = None) -> int:
        """The data shard of ``rank``; 0 for a rank outside the mesh (RANK unset included), as upstream, so a
        single process reads rank 0's share."""
        coord = self.get_coord(rank)
        if coord is None:
            return 0
        return (coord.get("dp", 0) * self._size_or_one("fsdp") + coord.get("fsdp", 0)) // self._ulysses

    @property
    def data_rank(self) -> int:
        """This rank's data shard: (dp_rank * fsdp_world_size + fsdp_rank) // ulysses; 0 off the mesh."""
        return self.get_data_rank()

    # ------------------------------------------------------------------ tp / pp helpers (upstream names)

    def get_tp_ranks(self) -> list[int]:
        """The ranks of this rank's tensor-parallel group; ``[]`` off the mesh, ``[rank]`` with no tp dimension."""
        if not self.has_dim("tp"):
            return [self.rank]
        return self.get_dim_group_ranks("tp")

    def is_tp_last_rank(self) -> bool:
        if not self.has_dim("tp"):
            return True
        tp_rank = self.tp_rank
        return tp_rank is not None and tp_rank == self.tp_world_size - 1

    def is_pp_first_rank(self) -> bool:
        if self.get_coord() is None:
            return False
        return self.pp_rank in (None, 0)

    def is_pp_last_rank(self) -> bool:
        if self.get_coord() is None:
            return False
        pp_rank = self.pp_rank
        return pp_rank is None or pp_rank == self.pp_world_size - 1

    def get_slice(self, total: int, rank: int | None = None) -> slice:
        """The part of ``total`` items that data rank ``rank`` (default: this one) gets.

        Items split evenly; the first ``total % data_world_size`` ranks get one more.
        """
        n = self.data_world_size
        if rank is None:
            rank = self.data_rank
        if not 0 <= rank < n:
            raise ConfigError(f"data rank {rank} is outside 0..{n - 1}")
        base, extra = divmod(total, n)
        start = rank * base + min(rank, extra)
        return slice(start, start + base + (1 if rank < extra else 0))

    def get_collect_ranks(self) -> list[int]:
        """One global rank per data rank, in data-rank order: the last pp stage, tp/cp index 0, first ulysses peer."""
        chosen: dict[int, int] = {}
        last_pp = self._size_or_one("pp") - 1
        for rank in np.ravel(self.mesh):
            coord = self.get_coord(int(rank))
            assert coord is not None
            if coord.get("pp", last_pp) != last_pp or coord.get("tp", 0) != 0 or coord.get("cp", 0) != 0:
                continue
            data_rank = self.get_data_rank(int(rank))
            chosen.setdefault(data_rank, int(rank))
        return [chosen[k] for k in sorted(chosen)]

    # ------------------------------------------------------------------ torch

    def to_torch(self):
        """The equivalent ``torch.distributed.device_mesh.DeviceMesh`` (needs an initialised process group)."""
        from torch.distributed.device_mesh import DeviceMesh as TorchDeviceMesh

        kind = str(self.device_type).lower()
        kind = {"gpu": "cuda"}.get(kind, kind)
        return TorchDeviceMesh(kind, self.mesh, mesh_dim_names=self.mesh_dim_names)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeviceMesh):
            return NotImplemented
        return (
            self.mesh_dim_names == other.mesh_dim_names
            and np.array_equal(self.mesh, other.mesh)
            and (self.ep_size, self.etp_size, self.ep_fsdp_size, self.vpp_size, self.ulysses_size)
            == (other.ep_size, other.etp_size, other.ep_fsdp_size, other.vpp_size, other.ulysses_size)
            and self.sequence_parallel == other.sequence_parallel
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like the ndarray it holds

    def __repr__(self) -> str:
        dims = ", ".join(f"{n}={s}" for n, s in zip(self.mesh_dim_names, self.mesh.shape, strict=True))
        return f"DeviceMesh({dims}, device_type={self.device_type!r})"
