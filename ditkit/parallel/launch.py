"""Local multi-process runs without torchrun (tests, ``ditkit bench-parallel``): :func:`spawn` starts
``world_size`` processes on this machine, joined in a gloo (or nccl) group over a free loopback port, calls
``fn(rank, world_size, *args)`` in each and returns rank 0's result; a process's exception stops all of them and is
raised with its traceback. Do not call it from inside a torchrun job (nested launchers hang)."""
from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, world_size: int, port: int, threads: int, out: str, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(threads)
    try:
        result = fn(rank, world_size, *args)
        if rank == 0:
            torch.save(result, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, world_size: int, *args, threads: int = 1):
    """rank 0's return value of ``fn(rank, world_size, *args)`` (tensors, numbers, lists, dicts) run on
    ``world_size`` local processes with ``threads`` torch threads each; ``fn`` must be importable (module level)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(_process, (world_size, free_port(), threads, out, fn, args), nprocs=world_size, join=True)
        return torch.load(out, weights_only=True)
