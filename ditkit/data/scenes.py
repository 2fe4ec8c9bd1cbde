"""Captioned MNIST scenes: one or two real MNIST digits on a canvas, each with a position, a size and a stroke
thickness, and a caption that says exactly what was drawn (text-to-image training and prompt-adherence tests).

Scene ``index`` of a split is a pure function of (seed, index), like :class:`~ditkit.data.video.MovingMNIST`; the
'heldout' split draws its digits from the 1,000 held-out MNIST digits, 'train' from the other 4,000.

Canvas 40 x 40 (with patch 4: 100 tokens, about 1.6x the 64 of the bundled 32 x 32 image DiT, so training stays
within this CPU's reach): a large digit (22 px) fits a quadrant, two 16 px digits fit side by side or one above the
other, and a small digit (14 px) is still legible.

- one digit: size small | large, thickness thin | bold (the 28 px digit eroded or dilated by one pixel), position
  center | top left | top right | bottom left | bottom right (a box centre, jittered by up to 2 px);
- two digits (16 px, thickness at random): side by side (relation 'left-right', digits listed left first) or one
  above the other ('above', top first).

Captions name every attribute or leave some out (an attribute left out was still drawn, at random), use numerals
or number words, and vary articles, nouns ("digit", "number") and word order. :func:`parse_caption` reads any such
caption, and the grammar's core forms, back into a :class:`Scene` with the attributes it names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from .images import mnist_split

CANVAS = 40
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZES = {"small": 14, "large": 22}
PAIR_SIZE = 16
THICKNESSES = ("thin", "bold")
POSITIONS = {"center": (20, 20), "top left": (11, 11), "top right": (11, 29), "bottom left": (29, 11),
             "bottom right": (29, 29)}                          # box centres (row, column) on the 40 x 40 canvas
PAIR_CENTRES = {"left-right": ((20, 11), (20, 29)), "above": ((11, 20), (29, 20))}
POSITION_PHRASES = {"center": ("in the center", "in the middle"),
                    **{p: (f"at the {p}", f"in the {p} corner", f"at the {p} corner") for p in list(POSITIONS)[1:]}}
JITTER = 2                                                      # px, each axis


@dataclass(frozen=True)
class Digit:
    """One digit of a scene; None for an attribute a caption does not name."""
    digit: int
    size: str | None = None
    thickness: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class Scene:
    """What a caption asks for: one digit, or two with a ``relation`` ('left-right': left first; 'above': top
    first)."""
    digits: tuple[Digit, ...]
    relation: str | None = None


def _number(d: int, rng: np.random.Generator) -> str:
    return WORDS[d] if rng.random() < 0.5 else str(d)


def _article(word: str, rng: np.random.Generator, definite: float = 0.25) -> str:
    if rng.random() < definite:
        return "the"
    return "an" if word[0] in "aeiou8" or word.startswith("eight") else "a"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption of ``scene`` naming exactly its non-None attributes, phrased at random."""
    if len(scene.digits) == 1:
        return _single_caption(scene.digits[0], rng)
    first, second = scene.digits
    noun = lambda d: (f"{rng.choice(['digit', 'number'])} " if rng.random() < 0.3 else "") + _number(d.digit, rng)
    a, b = noun(first), noun(second)
    art = lambda w: (_article(w, rng) + " ") if rng.random() < 0.5 else ""
    a, b = art(a) + a, art(b) + b
    if scene.relation == "left-right":
        forms = [f"{a} on the left and {b} on the right", f"{b} on the right and {a} on the left",
                 f"{a} to the left of {b}", f"{b} to the right of {a}", f"{a} next to {b}, left to right"]
    else:
        forms = [f"{a} above {b}", f"{b} below {a}", f"{a} on top and {b} at the bottom",
                 f"{b} at the bottom and {a} on top"]
    return str(rng.choice(forms))


def _single_caption(d: Digit, rng: np.random.Generator) -> str:
    number = _number(d.digit, rng)
    noun = f"{rng.choice(['digit', 'number'])} " if rng.random() < 0.3 else ""
    adjectives = [w for w in (d.size, d.thickness) if w]
    if len(adjectives) == 2 and rng.random() < 0.3:
        adjectives.reverse()
    where = str(rng.choice(POSITION_PHRASES[d.position])) if d.position else ""
    form = rng.random()
    if form < 0.5 or not (adjectives or where):                 # 'a small bold 7 at the top left'
        core = " ".join(adjectives + [noun + number])
        text = f"{_article(core, rng)} {core}" if rng.random() < 0.8 else core
        return f"{text} {where}".strip()
    if form < 0.75 and where:                                    # 'at the top left, a small 7'
        core = " ".join(adjectives + [noun + number])
        return f"{where}, {_article(core, rng)} {core}"
    described = " and ".join(adjectives)                         # 'the number 7, small and bold, at the top left'
    return ", ".join(p for p in (f"the {noun or 'digit '}{number}", described, where) if p)


_DIGIT = re.compile(r"\b(\d|" + "|".join(WORDS) + r")\b")
_FILLER = re.compile(r"\b(a|an|the|digit|number)\b")
_POSITION = re.compile(r"\b(?:in|at) (center|centre|middle|top left|top right|bottom left|bottom right)(?: corner)?\b")


def _skeleton(text: str) -> str:
    """Lower-case words without punctuation, articles and 'digit' / 'number', each digit replaced by 'D'."""
    s = re.sub(r"[^a-z0-9 ]+", " ", text.lower())
    return " ".join(_FILLER.sub(" ", _DIGIT.sub(" D ", s)).split())


_PAIRS = [(_skeleton(form.replace("X", "1")), relation, swap) for form, relation, swap in [
    ("X on the left and X on the right", "left-right", 0), ("X on the right and X on the left", "left-right", 1),
    ("X to the left of X", "left-right", 0), ("X to the right of X", "left-right", 1),
    ("X next to X left to right", "left-right", 0), ("X above X", "above", 0), ("X below X", "above", 1),
    ("X on top and X at the bottom", "above", 0), ("X at the bottom and X on top", "above", 1)]]


def parse_caption(text: str) -> Scene:
    """The scene a caption asks for, with the attributes it names (see the module docstring); a caption outside
    the grammar is a ValueError saying what is expected."""
    s = re.sub(r"[^a-z0-9 ]+", " ", text.lower())
    digits = [int(m) if m.isdigit() else WORDS.index(m) for m in _DIGIT.findall(s)]
    skeleton = _skeleton(text)
    if len(digits) == 1:
        found = _POSITION.search(skeleton)
        position = None if found is None else "center" if found.group(1) in ("centre", "middle") else found.group(1)
        rest = _POSITION.sub(" ", skeleton).split()
        size = next((w for w in SIZES if w in rest), None)
        thickness = next((w for w in THICKNESSES if w in rest), None)
        if all(w in ("D", "and", size, thickness) for w in rest) and rest.count("D") == 1:
            return Scene((Digit(digits[0], size, thickness, position),))
    if len(digits) == 2:
        for pattern, relation, swap in _PAIRS:
            if skeleton == pattern:
                order = digits[::-1] if swap else digits
                return Scene((Digit(order[0]), Digit(order[1])), relation)
    raise ValueError(f"caption {text!r} is not in the scene grammar: give one digit with optional size (small, "
                     f"large), thickness (thin, bold) and position (in the center, at the top left, ...), e.g. 'a "
                     f"bold 7 at the top left', or two digits side by side or one above the other, e.g. '3 on the "
                     f"left and 8 on the right', '2 above 5'")


def stroke(digit: torch.Tensor, thickness: str) -> torch.Tensor:
    """A 28 px digit [1, 1, 28, 28] in [0, 1] dilated (bold) or eroded (thin) by one pixel; an erosion that would
    remove more than 60 % of the ink keeps the digit as it is."""
    if thickness == "bold":
        return F.max_pool2d(digit, 3, 1, 1)
    thin = -F.max_pool2d(-digit, 3, 1, 1)
    return thin if thin.sum() >= 0.4 * digit.sum() else digit


class CaptionedScenes:
    """Scenes of a split: ``scene(i)`` -> (image [H, W] float32 in [-1, 1], caption, the drawn :class:`Scene` with
    every attribute), ``get(indices)`` -> (images [N, 1, H, W], captions). ``pairs``: fraction of two-digit scenes;
    ``omit``: probability that a caption leaves out each attribute."""

    channels = 1

    def __init__(self, split: str = "train", pairs: float = 0.3, omit: float = 0.25, seed: int = 0):
        if not 0 <= pairs <= 1 or not 0 <= omit <= 1:
            raise ValueError(f"pairs and omit are probabilities in [0, 1], got {pairs} and {omit}")
        data = mnist_split(split, 28)
        self.digits, self.labels = (data.images + 1) / 2, data.labels.numpy()
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(10)]
        self.split, self.pairs, self.omit, self.seed = split, pairs, omit, seed

    def _place(self, scene: Scene, rng: np.random.Generator) -> list[tuple[int, int, str, int, int]]:
        """Every random draw of drawing ``scene`` (every attribute set): per digit (glyph index, size in px,
        thickness, top, left)."""
        placed = []
        centres = [POSITIONS[scene.digits[0].position]] if scene.relation is None else PAIR_CENTRES[scene.relation]
        for d, centre in zip(scene.digits, centres):
            size = PAIR_SIZE if scene.relation else SIZES[d.size]
            glyph = int(rng.choice(self.by_class[d.digit]))
            y, x = (int(c - size // 2 + rng.integers(-JITTER, JITTER + 1)) for c in centre)
            placed.append((glyph, size, d.thickness, min(max(y, 0), CANVAS - size), min(max(x, 0), CANVAS - size)))
        return placed

    def drawn(self, index: int) -> Scene:
        """The scene ``index`` draws, every attribute set."""
        rng = np.random.default_rng([self.seed, index, 0])
        if rng.random() < self.pairs:
            a, b = (int(v) for v in rng.integers(0, 10, 2))
            relation = str(rng.choice(list(PAIR_CENTRES)))
            return Scene((Digit(a, None, str(rng.choice(THICKNESSES))), Digit(b, None, str(rng.choice(THICKNESSES)))),
                         relation)
        return Scene((Digit(int(rng.integers(10)), str(rng.choice(list(SIZES))), str(rng.choice(THICKNESSES)),
                            str(rng.choice(list(POSITIONS)))),))

    def draw(self, scene: Scene, rng: np.random.Generator) -> torch.Tensor:
        """A canvas [H, W] in [0, 1] with ``scene`` (every attribute set) drawn with glyphs of this split."""
        canvas = torch.zeros(CANVAS, CANVAS)
        for glyph, size, thickness, y, x in self._place(scene, rng):
            ink = F.interpolate(stroke(self.digits[glyph][None], thickness), size=(size, size), mode="area")[0, 0]
            torch.maximum(canvas[y:y + size, x:x + size], ink, out=canvas[y:y + size, x:x + size])
        return canvas

    def scene(self, index: int) -> tuple[torch.Tensor, str, Scene]:
        drawn = self.drawn(index)
        rng = np.random.default_rng([self.seed, index, 1])
        canvas = self.draw(drawn, rng)
        return canvas * 2 - 1, self._caption(drawn, rng), drawn

    def caption(self, index: int) -> str:
        """The caption of scene ``index`` without drawing it (the same random draws)."""
        drawn = self.drawn(index)
        rng = np.random.default_rng([self.seed, index, 1])
        self._place(drawn, rng)
        return self._caption(drawn, rng)

    def _caption(self, drawn: Scene, rng: np.random.Generator) -> str:
        if drawn.relation is None:
            d = drawn.digits[0]
            told = Scene((replace(d, **{k: None for k in ("size", "thickness", "position") if rng.random() < self.omit}),))
        else:
            told = Scene(tuple(Digit(d.digit) for d in drawn.digits), drawn.relation)
        return caption(told, rng)

    def render(self, text: str, index: int) -> torch.Tensor:
        """A real image [H, W] in [-1, 1] of what caption ``text`` asks (:func:`parse_caption`), the attributes it
        leaves open drawn at random: a pure function of (seed, index, caption); the real baseline of an evaluation."""
        asked = parse_caption(text)
        rng = np.random.default_rng([self.seed, index, 2])
        pick = lambda value, options: value if value is not None else str(rng.choice(list(options)))
        digits = tuple(replace(d, size=None if asked.relation else pick(d.size, SIZES),
                               thickness=pick(d.thickness, THICKNESSES),
                               position=None if asked.relation else pick(d.position, POSITIONS))
                       for d in asked.digits)
        return self.draw(Scene(digits, asked.relation), rng) * 2 - 1

    def get(self, indices) -> tuple[torch.Tensor, list[str]]:
        images = torch.empty(len(indices), 1, CANVAS, CANVAS)
        captions = []
        for n, i in enumerate(indices):
            image, text, _ = self.scene(int(i))
            images[n, 0] = image
            captions.append(text)
        return images, captions


# every word a caption of this module uses, and those the grammar's other phrasings may (a tokenizer's vocabulary)
VOCABULARY = tuple(dict.fromkeys(
    [str(d) for d in range(10)] + list(WORDS) + list(SIZES) + list(THICKNESSES)
    + "a an the digit number and in at on of to next top bottom left right center centre middle corner above below"
      .split()))
