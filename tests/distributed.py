"""Running a function on several gloo processes from a test: ``run(fn, world_size, *args)`` spawns the workers
(one torch thread each, a free loopback port), calls ``fn(rank, world_size, *args)`` in each and returns rank 0's
result; a worker's exception fails the test with its traceback."""
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


def _worker(rank: int, world_size: int, port: int, out: str, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    try:
        result = fn(rank, world_size, *args)
        if rank == 0:
            torch.save(result, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(fn, world_size: int, *args):
    """rank 0's return value of ``fn(rank, world_size, *args)`` run on ``world_size`` gloo processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        mp.spawn(_worker, (world_size, free_port(), out, fn, args), nprocs=world_size, join=True)
        return torch.load(out, weights_only=False)
