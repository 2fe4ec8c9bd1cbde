"""Multi-process inference layout on a torch.distributed device mesh: data x CFG x ring x Ulysses.

xDiT's degrees (``--ulysses-degree``, ``--ring-degree``, ``--cfg-parallel``): their product must divide the world
size; the quotient is data parallelism over samples. Mesh dims, outermost first: ``dp``, ``cfg``, ``ring``,
``ulysses`` (Ulysses innermost: its all-to-alls need the fastest links, neighbouring ranks). A process's part of
the token sequence is number ``ring_index * ulysses_degree + ulysses_index`` of the ``ring x ulysses`` sequence
group. The same code runs on gloo (CPU) and nccl (CUDA); launch with ``torchrun --nproc_per_node N``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as differentiable
from torch.distributed.device_mesh import init_device_mesh

DIMS = ("dp", "cfg", "ring", "ulysses")


class Traffic:
    """Bytes this process sent to other processes through this package's collectives (``sent``; ``reset()``
    between measurements), as ``ditkit bench-parallel`` reports them against the theoretical volume."""

    def __init__(self):
        self.sent = 0

    def add(self, tensor: torch.Tensor, receivers: int) -> None:
        self.sent += tensor.numel() * tensor.element_size() * receivers

    def reset(self) -> None:
        self.sent = 0


traffic = Traffic()


@dataclass(frozen=True)
class ParallelConfig:
    ulysses_degree: int = 1
    ring_degree: int = 1
    cfg_parallel: bool = False

    def __post_init__(self):
        for name in ("ulysses_degree", "ring_degree"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value!r} is not valid: expected an integer >= 1")

    @property
    def cfg_degree(self) -> int:
        return 2 if self.cfg_parallel else 1

    @property
    def sequence_degree(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def degree(self) -> int:
        return self.cfg_degree * self.sequence_degree

    def data_degree(self, world_size: int) -> int:
        """World size / (cfg x ring x Ulysses), with a clear error when the product does not divide it."""
        if world_size % self.degree:
            raise ValueError(f"--ulysses-degree {self.ulysses_degree} x --ring-degree {self.ring_degree}"
                             f"{' x 2 (--cfg-parallel)' if self.cfg_parallel else ''} = {self.degree} does not divide "
                             f"the world size {world_size}: launch torchrun --nproc_per_node {self.degree} (or a "
                             f"multiple: the rest is data parallel over samples), or change the degrees")
        return world_size // self.degree

    def check_heads(self, num_heads: int) -> None:
        """Ulysses splits heads over its processes; fewer heads than processes cannot be split."""
        if self.ulysses_degree > num_heads:
            raise ValueError(f"--ulysses-degree {self.ulysses_degree} is more than the model's {num_heads} attention "
                             f"heads: Ulysses gives each process at least one head; use --ulysses-degree <= "
                             f"{num_heads} and --ring-degree for the rest")


def distributed_env() -> tuple[int, int] | None:
    """(rank, world size) from torchrun's environment, or None outside a launcher."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def process_device(name: str) -> str:
    """Under torchrun, a CUDA device name without an index -> this process's GPU (``cuda:LOCAL_RANK``)."""
    if str(name).strip().lower() in ("cuda", "auto") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return name


def init_process_group(device: torch.device) -> None:
    """Join the torchrun job (gloo on CPU, nccl on CUDA, this process's LOCAL_RANK device); no-op if joined."""
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device if device.index is not None else int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


class ParallelState:
    """This process's place in the mesh: ``rank`` / ``world_size``, an index and a process group per dim
    (``index("ring")``, ``group("ulysses")``), and ``sequence_group``, the ring x Ulysses processes that share one
    sequence (for gathers and reductions over all its tokens)."""

    def __init__(self, config: ParallelConfig, device: torch.device):
        env = distributed_env()
        if env is None:
            raise ValueError(f"--ulysses-degree / --ring-degree / --cfg-parallel need {config.degree} processes: launch "
                             f"with torchrun --nproc_per_node {config.degree} -m ditkit.cli ...")
        init_process_group(device)
        self.config, self.device = config, device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        shape = (config.data_degree(self.world_size), config.cfg_degree, config.ring_degree, config.ulysses_degree)
        self.sizes = dict(zip(DIMS, shape))
        self.mesh = init_device_mesh(device.type, shape, mesh_dim_names=DIMS)
        self._groups = {d: self.mesh.get_group(d) for d in DIMS}
        self._index = {d: self.mesh.get_local_rank(d) for d in DIMS}
        self.sequence_group = None
        ranks = self.mesh.mesh
        for d in range(shape[0]):                            # every process creates every group (new_group's rule)
            for c in range(shape[1]):
                members = ranks[d, c].flatten().tolist()
                group = dist.new_group(members)
                if self.rank in members:
                    self.sequence_group = group

    def size(self, dim: str) -> int:
        return self.sizes[dim]

    def index(self, dim: str) -> int:
        return self._index[dim]

    def group(self, dim: str):
        return self._groups[dim]

    @property
    def sequence_index(self) -> int:
        """This process's part of the token sequence: ring index x Ulysses degree + Ulysses index."""
        return self.index("ring") * self.size("ulysses") + self.index("ulysses")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """'4 processes: ulysses 2 x ring 2' (the dims of size > 1)."""
        dims = " x ".join(f"{'data' if d == 'dp' else d} {self.sizes[d]}" for d in DIMS if self.sizes[d] > 1)
        return f"{self.world_size} processes" + (f": {dims}" if dims else "")

    def barrier(self) -> None:
        dist.barrier()


def all_gather_rows(x: torch.Tensor, sizes: list[int], dim: int, group) -> torch.Tensor:
    """Concatenate along ``dim`` the parts of ``group``'s processes, part i of length ``sizes[i]`` (uneven parts
    are padded to the longest for the collective, then trimmed); differentiable when ``x`` requires grad."""
    longest = max(sizes)
    pad = longest - x.shape[dim]
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:dim], pad, *x.shape[dim + 1:])], dim=dim)
    if x.requires_grad:                                    # training: the backward pass sums the parts' gradients
        parts = differentiable.all_gather_tensor_autograd(x.contiguous(), dim, group).chunk(len(sizes), dim)
    else:
        parts = [torch.empty_like(x) for _ in sizes]
        dist.all_gather(parts, x.contiguous(), group=group)
    traffic.add(x, len(sizes) - 1)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)
