"""Text encoders: prompts -> token states [N, L, D] and a mask [N, L] (True = a real token), what a text-conditioned
DiT cross-attends to.

- :class:`TransformersTextEncoder`: a local transformers encoder folder (T5, UMT5, mT5, CLIP text, BERT, or any
  ``AutoModelForTextEncoding`` model) with its tokenizer, offline. PixArt's convention: prompts padded or cut to
  ``max_length`` tokens (120 for PixArt-alpha's T5), the mask marking the real ones.
- :class:`CachedTextEncoder`: any encoder with its outputs kept per distinct prompt (training re-encodes the same
  captions otherwise), saved to and loaded from a safetensors file.
- :class:`WordTokenizer` and :class:`SmallTextEncoder`: a word-level tokenizer with its vocabulary and a small
  transformer encoder, trained with the model that reads it and saved in that model's file (no download).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Protocol, Sequence

import torch
import torch.nn as nn

from ..core import checkpoint as ckpt


class TextEncoder(Protocol):
    dim: int

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (states [N, L, dim] float, mask [N, L] bool)."""


class TransformersTextEncoder:
    """A local transformers text encoder folder and its tokenizer (see the module docstring), in eval mode."""

    def __init__(self, path: str | Path, device="cpu", max_length: int = 120, dtype: torch.dtype = torch.float32,
                 tokenizer: str | Path | None = None):
        """``tokenizer``: the tokenizer's folder when it is not ``path`` (a diffusers pipeline's tokenizer/)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--text-encoder {path}: not a transformers model folder (no config.json); give a "
                                    f"local folder saved with save_pretrained, e.g. a T5 encoder with its tokenizer")
        if max_length < 1:
            raise ValueError(f"max_length={max_length}: give the number of text tokens, e.g. 120 (PixArt-alpha)")
        try:
            import transformers
        except ImportError:
            raise ImportError("--text-encoder needs the transformers package: pip install transformers") from None
        config = transformers.AutoConfig.from_pretrained(path)
        loader = transformers.CLIPTextModel if config.model_type == "clip" else transformers.AutoModelForTextEncoding
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer or path)
        except (OSError, ValueError) as e:
            raise ValueError(f"--text-encoder {path}: no tokenizer could be loaded from {tokenizer or 'the folder'} "
                             f"({e}); save the tokenizer next to the model with tokenizer.save_pretrained") from None
        self.model = loader.from_pretrained(path, torch_dtype=dtype).to(device).eval().requires_grad_(False)
        self.dim = getattr(self.model.config, "d_model", None) or self.model.config.hidden_size
        self.max_length, self.device = max_length, torch.device(device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float(), mask.bool()


def _key(prompt: str) -> str:
    return hashlib.sha1(prompt.encode()).hexdigest()


class CachedTextEncoder:
    """``encoder``'s outputs per distinct prompt, computed once (``encode`` batches the new ones); ``save(path)`` /
    ``load(path)`` keep them in a safetensors file (with the prompts in its metadata)."""

    def __init__(self, encoder: TextEncoder):
        self.encoder, self.dim = encoder, encoder.dim
        self.states: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.prompts: dict[str, str] = {}

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        new = list(dict.fromkeys(p for p in prompts if _key(p) not in self.states))
        if new:
            states, mask = self.encoder.encode(new)
            for p, s, m in zip(new, states, mask):
                k = _key(p)
                self.states[k], self.masks[k], self.prompts[k] = s, m, p
        keys = [_key(p) for p in prompts]
        return torch.stack([self.states[k] for k in keys]), torch.stack([self.masks[k] for k in keys])

    def save(self, path: str | Path) -> Path:
        tensors = {**{f"states.{k}": v for k, v in self.states.items()},
                   **{f"mask.{k}": v.to(torch.uint8) for k, v in self.masks.items()}}
        return ckpt.save_weights(path, tensors, {"format": "ditkit-text-cache", "dim": self.dim, "prompts": self.prompts})

    def load(self, path: str | Path) -> "CachedTextEncoder":
        meta = ckpt.read_metadata(path)
        if meta.get("format") != "ditkit-text-cache":
            raise ValueError(f"{path} is not a ditkit text-embedding cache (format {meta.get('format')!r})")
        if meta["dim"] != self.dim:
            raise ValueError(f"{path} caches {meta['dim']}-wide text states but this encoder makes {self.dim}: it was "
                             f"made by another text encoder; delete it to re-encode the prompts")
        tensors = ckpt.load_weights(path)
        for k, prompt in meta["prompts"].items():
            self.states[k], self.masks[k] = tensors[f"states.{k}"], tensors[f"mask.{k}"].bool()
            self.prompts[k] = prompt
        return self


class WordTokenizer:
    """Lower-case words and digits -> ids (0 padding, 1 unknown word, 2 end of text), a fixed vocabulary stored with
    the model that uses it (``to_dict`` / ``from_dict``): the bundled text-to-image model's tokenizer, offline."""

    PAD, UNKNOWN, END = 0, 1, 2
    SPECIAL = ("<pad>", "<unk>", "</s>")

    def __init__(self, vocabulary: Sequence[str]):
        words = list(dict.fromkeys(w.lower() for w in vocabulary if w.lower() not in self.SPECIAL))
        self.vocabulary = list(self.SPECIAL) + words
        self.ids = {w: i for i, w in enumerate(self.vocabulary)}

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z]+|\d", text.lower())

    def encode(self, prompts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (ids [N, max_length] long, mask [N, max_length] bool); longer prompts are cut."""
        ids = torch.full((len(prompts), max_length), self.PAD, dtype=torch.long)
        for n, prompt in enumerate(prompts):
            tokens = [self.ids.get(w, self.UNKNOWN) for w in self.words(prompt)][:max_length - 1] + [self.END]
            ids[n, :len(tokens)] = torch.tensor(tokens)
        return ids, ids != self.PAD

    def to_dict(self) -> dict:
        return {"kind": "words", "vocabulary": self.vocabulary}

    @classmethod
    def from_dict(cls, d: dict) -> "WordTokenizer":
        if d.get("kind") != "words":
            raise ValueError(f"unknown tokenizer kind {d.get('kind')!r}; this ditkit reads 'words'")
        return cls(d["vocabulary"])


class SmallTextEncoder(nn.Module):
    """A small transformer text encoder trained with the model that reads it: word and position embeddings, then
    ``depth`` pre-norm ``nn.TransformerEncoderLayer`` blocks that ignore padding; ``encode(prompts)`` -> states
    [N, max_length, dim], mask [N, max_length]."""

    def __init__(self, tokenizer: WordTokenizer, dim: int = 128, depth: int = 2, num_heads: int = 4,
                 max_length: int = 24):
        super().__init__()
        self.tokenizer, self.dim, self.max_length = tokenizer, dim, max_length
        self.embedding = nn.Embedding(len(tokenizer.vocabulary), dim, padding_idx=WordTokenizer.PAD)
        self.positions = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [N, L] -> states [N, L, dim] (padding positions zero)."""
        x = self.embedding(ids) + self.positions[:ids.shape[1]]
        x = self.norm(self.layers(x, src_key_padding_mask=~mask))
        return x * mask[..., None]

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.encode(prompts, self.max_length)
        device = self.positions.device
        ids, mask = ids.to(device), mask.to(device)
        return self(ids, mask), mask
