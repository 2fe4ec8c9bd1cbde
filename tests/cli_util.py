"""Driving the ``ditkit`` CLI in tests: in process (fast) or as a subprocess (signals, side files, the real exit
path), asserting the exit status, that the message names what was wrong, and that no traceback was printed."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from ditkit.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(*argv: str, rc: int = 0) -> tuple[str, str]:
    """Run ``ditkit argv`` in this process; assert its exit status is ``rc`` and nothing raised; (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    assert code == rc, f"ditkit {' '.join(map(str, argv))}: exit {code}, expected {rc}\n{err.getvalue()}"
    assert "Traceback" not in out.getvalue() + err.getvalue(), err.getvalue()
    return out.getvalue(), err.getvalue()


def cli_error(*argv: str, names: tuple[str, ...] = (), rc: int = 2) -> str:
    """Run a bad command: exit status ``rc``, one clear error on stderr mentioning every string in ``names`` (the
    bad value, the flag, the fix); returns stderr."""
    _, err = run_cli(*argv, rc=rc)
    for name in names:
        assert name in err, f"ditkit {' '.join(map(str, argv))}: {name!r} not in the error:\n{err}"
    return err


def run_subprocess(*argv: str, cwd: Path | None = None, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    """``python -m ditkit.cli argv`` in a fresh process (stdout not a terminal), one thread."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ditkit.cli", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def tmp_filler(tmp_path: Path):
    """``fill(items)``: each item as a string with ``{tmp}`` replaced by ``tmp_path`` (parametrized paths)."""
    return lambda items: tuple(str(a).format(tmp=tmp_path) for a in items)
