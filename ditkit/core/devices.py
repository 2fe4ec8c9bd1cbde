"""``--device`` / ``train.device`` names checked before any work: 'auto' picks CUDA when present; a device this
machine does not have, or a misspelt one, is an error naming it and the devices that are available."""
from __future__ import annotations

import os

import torch


def available_devices() -> list[str]:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device, flag: str = "--device") -> torch.device:
    """``name`` ('auto', 'cpu', 'cuda', 'cuda:1', 'mps' or a torch.device) -> a device this machine has."""
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = ", ".join(available_devices())
    if text in ("gpu", "nvidia"):
        hint = "cuda" if torch.cuda.is_available() else "cpu (this machine has no CUDA device)"
        raise ValueError(f"{flag} {name}: PyTorch calls GPUs 'cuda'; use {flag} {hint} (available: {available})")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"{flag} {name} is not a device name; use one of: auto, {available}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"{flag} {name}: no CUDA device on this machine (torch {torch.__version__}, {build}); "
                             f"use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(available: {available})")
    elif device.type == "mps" and "mps" not in available_devices():
        raise ValueError(f"{flag} {name}: MPS is not available on this machine; use {flag} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag} {name}: ditkit runs on cpu, cuda or mps; available here: {available}")
    return device


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``: CUDA's free memory, the CPU's MemAvailable (Linux) or free
    physical pages; None when the platform does not say."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
