"""Progress of long loops: a tqdm bar on a terminal, plain lines (done/total, rate, ETA, the latest values) every
``every`` units or ``seconds`` otherwise (nohup, CI, log files), nothing when disabled."""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class PlainProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` as plain lines on ``stream``: one every ``every`` units and at
    least every ``seconds``, and one at the end; ``unit`` names what is counted ('step', 'window', ...)."""

    def __init__(self, total: int, desc: str, initial: int = 0, every: int | None = None, seconds: float = 60.0,
                 unit: str = "step", stream=None):
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.every = every or max(1, total // 20)
        self.seconds, self.stream = seconds, stream or sys.stdout
        self.start_n, self.t0 = initial, time.time()
        self.last_n, self.last_t = initial, self.t0
        self.postfix: dict = {}

    def set_postfix(self, **values):
        self.postfix = values

    def update(self, n: int = 1):
        self.n += n
        now = time.time()
        if self.n == self.total or self.n % self.every == 0 or now - self.last_t >= self.seconds:
            self._line(now)

    def _line(self, now: float):
        if self.n == self.last_n:
            return
        rate = (self.n - self.start_n) / max(now - self.t0, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        values = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.unit} {self.n}/{self.total}{values}, {rate:.2f} {self.unit}s/s, elapsed "
              f"{_duration(now - self.t0)}, ETA {_duration(eta)}", file=self.stream, flush=True)
        self.last_n, self.last_t = self.n, now

    def close(self):
        self._line(time.time())


class _Silent:
    def set_postfix(self, **values):
        pass

    def update(self, n: int = 1):
        pass

    def close(self):
        pass


def progress_bar(total: int, desc: str, enabled: bool | None = None, initial: int = 0, every: int | None = None,
                 unit: str = "step", stream=None):
    """A progress reporter over ``total`` units: ``enabled`` None = tqdm when ``stream`` (stdout) is a terminal,
    plain lines otherwise; True = always tqdm; False = silent."""
    stream = stream or sys.stdout
    if enabled is False:
        return _Silent()
    if enabled or stream.isatty():
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=stream, unit=unit)
    return PlainProgress(total, desc, initial, every, unit=unit, stream=stream)
