"""Weights on disk: ditkit safetensors files (weights + JSON metadata), atomic writes, strict loading with errors
that list missing / unexpected keys and shape mismatches."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open

from .outputs import atomic_write


class CheckpointMismatchError(ValueError):
    pass


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """Write tensors (made contiguous, detached) with ``metadata`` stored as JSON under the key 'ditkit'."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {"ditkit": json.dumps(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_metadata(path: str | Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); re-download or re-export it") from None
    return json.loads(meta.get("ditkit", "{}"))


def load_weights(path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); re-download or re-export it") from None


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                           optional: tuple[str, ...] = ()) -> None:
    """Copy ``state_dict`` into ``model``; keys in ``optional`` may be absent. Any other difference raises an error
    listing every missing key, unexpected key and shape mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{source} does not match the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))
        lines.append("  check that the model config (size, patch, input size, channels, classes, learn_sigma) "
                     "matches the one the checkpoint was trained with")
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict({**{k: own[k] for k in optional if k not in state_dict}, **state_dict}, strict=True)
