"""Files a command writes: output paths checked before any work is done (a folder, a missing or wrong extension, a
parent that is a file, no permission are refused with the fix), and every write atomic (a temporary file in the same
folder, renamed over the target), so a killed run never leaves a half-written output."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable


def atomic_write(path: str | Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then rename tmp_path onto ``path`` (same directory, so the rename is atomic).
    The temporary name keeps ``path``'s suffix, so writers that pick a format by extension see the right one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o644)  # mkstemp (and some writers) create 0600; outputs are ordinary shareable files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` written atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data, indent: int = 1) -> Path:
    """``data`` as JSON (non-ASCII kept), written atomically, ending with a newline."""
    return write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def check_output_path(path: str | Path | None, flag: str, suffixes: Iterable[str] | None = None) -> Path | None:
    """Refuse an output path that cannot be written, before any work is done: ``path`` must not be a folder, must
    end in one of ``suffixes`` (e.g. ``(".png",)``; None = any extension), and its nearest existing parent must be a
    writable folder. Returns ``path`` as a Path (None passes through: the output was not asked for)."""
    if path is None:
        return None
    p = Path(path)
    allowed = tuple(s.lower() for s in suffixes) if suffixes else None
    if p.is_dir() or str(path).endswith(("/", os.sep)):
        example = f"{p / 'out'}{allowed[0] if allowed else '.json'}"
        raise ValueError(f"{flag} {path} is a folder; give a file name in it, e.g. {flag} {example}")
    if not p.suffix:
        want = " or ".join(allowed) if allowed else "an extension"
        raise ValueError(f"{flag} {path} has no file extension; give a file name ending in {want}, e.g. "
                         f"{flag} {p}{allowed[0] if allowed else '.json'}")
    if allowed and p.suffix.lower() not in allowed:
        raise ValueError(f"{flag} {path}: the file must end in {' or '.join(allowed)}, e.g. "
                         f"{flag} {p.with_suffix(allowed[0])}")
    parent = p.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a folder; choose a path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: no permission to write in {parent}; choose a folder you can write to")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{flag} {path} exists and is read-only; choose another file or make it writable")
    return p
