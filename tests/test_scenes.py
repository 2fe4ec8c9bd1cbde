"""Captioned MNIST scenes: deterministic, held-out digits apart, captions that say exactly what was drawn (in
varied phrasing), a parser for the caption grammar, and rendering that follows the attributes."""
import itertools

import numpy as np
import pytest
import torch

from ditkit.data.scenes import (CANVAS, POSITIONS, SIZES, WORDS, CaptionedScenes, Digit, Scene, _skeleton,
                                parse_caption)


@pytest.fixture(scope="module")
def scenes():
    return CaptionedScenes("train")


def test_scenes_are_deterministic_and_splits_differ(scenes):
    a, b = scenes.scene(7), CaptionedScenes("train").scene(7)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    held = CaptionedScenes("heldout").scene(7)
    assert held[2] == a[2] and not torch.equal(held[0], a[0])        # same scene, other MNIST digits
    assert a[0].shape == (CANVAS, CANVAS) and a[0].min() >= -1 and a[0].max() <= 1


def test_every_caption_names_only_what_was_drawn(scenes):
    skeletons = set()
    for i in range(400):
        _, text, drawn = scenes.scene(i)
        told = parse_caption(text)
        skeletons.add(_skeleton(text))
        assert told.relation == drawn.relation, text
        assert [d.digit for d in told.digits] == [d.digit for d in drawn.digits], text
        for asked, made in zip(told.digits, drawn.digits):
            for key in ("size", "thickness", "position"):
                assert getattr(asked, key) in (None, getattr(made, key)), (text, key)
    assert len(skeletons) > 40                                       # phrasing varies, not one template


def test_the_grammar_of_single_digits_and_pairs_parses():
    for size, thick, pos, word in itertools.product(("", "small", "large"), ("", "thin", "bold"),
                                                    ("", *POSITIONS), (False, True)):
        number = WORDS[7] if word else "7"
        where = {"": "", "center": "in the center"}.get(pos, f"at the {pos}")
        text = " ".join(w for w in ("a", size, thick, number, where) if w)
        assert parse_caption(text) == Scene((Digit(7, size or None, thick or None, pos or None),)), text
    assert parse_caption("3 on the left and 8 on the right") == Scene((Digit(3), Digit(8)), "left-right")
    assert parse_caption("the number 3 on the right and a digit 8 on the left") == \
        Scene((Digit(8), Digit(3)), "left-right")
    assert parse_caption("two above five") == Scene((Digit(2), Digit(5)), "above")
    assert parse_caption("2 below 5") == Scene((Digit(5), Digit(2)), "above")
    assert parse_caption("An eight, in the middle.") == Scene((Digit(8, None, None, "center"),))


@pytest.mark.parametrize("text", ["a 7 eating a banana", "7 7 7", "a dog", "3 and 8", "a huge 7"])
def test_captions_outside_the_grammar_are_clear_errors(text):
    with pytest.raises(ValueError, match="not in the scene grammar.*e.g. 'a bold 7 at the top left'"):
        parse_caption(text)


def test_rendering_follows_position_size_and_thickness(scenes):
    ink = {"small": [], "large": [], "thin": [], "bold": []}
    for i in range(300):
        image, _, drawn = scenes.scene(i)
        if drawn.relation is not None:                              # one digit in each half
            halves = ((image + 1) / 2).split(CANVAS // 2, dim=1 if drawn.relation == "left-right" else 0)
            assert min(float(h.sum()) for h in halves) > 10, drawn
            continue
        d, mass = drawn.digits[0], (image + 1) / 2
        rows, cols = torch.arange(CANVAS, dtype=torch.float32), torch.arange(CANVAS, dtype=torch.float32)
        y = float((mass.sum(1) * rows).sum() / mass.sum())
        x = float((mass.sum(0) * cols).sum() / mass.sum())
        cy, cx = POSITIONS[d.position]
        assert abs(y - cy) < 6 and abs(x - cx) < 6, (d, y, x)
        ink[d.size].append(float(mass.sum()))
        ink[d.thickness].append(float((mass > 0.5).sum()) / SIZES[d.size] ** 2)      # inked fraction of its box
    assert np.mean(ink["large"]) > 2 * np.mean(ink["small"])
    assert np.mean(ink["bold"]) > 1.5 * np.mean(ink["thin"])
