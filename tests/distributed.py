"""Running a function on several gloo processes from a test (one torch thread each): rank 0's result."""
from ditkit.parallel.launch import spawn


def run(fn, world_size: int, *args):
    return spawn(fn, world_size, *args, threads=1)
