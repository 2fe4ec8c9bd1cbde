"""Prompt adherence on captioned scenes: real held-out scenes score high on every attribute, mismatched captions
low; thresholds come from training-split scenes."""
import pytest

from ditkit.data.scenes import CaptionedScenes
from ditkit.evaluation.classifier import load_scene_classifier
from ditkit.evaluation.scenes import SceneJudge


@pytest.fixture(scope="module")
def judge():
    return SceneJudge(load_scene_classifier())


def test_real_heldout_scenes_meet_their_captions(judge):
    images, captions = CaptionedScenes("heldout", omit=0.0).get(range(3000, 3300))
    s = judge.scores(images, captions)
    assert s["num_prompts"] == 300
    assert s["position_accuracy"] >= 0.98 and s["size_accuracy"] >= 0.98
    assert s["digit_accuracy"] >= 0.95 and s["thickness_accuracy"] >= 0.85 and s["order_accuracy"] >= 0.9


def test_mismatched_captions_score_low(judge):
    images, captions = CaptionedScenes("heldout", omit=0.0).get(range(3000, 3300))
    shifted = captions[1:] + captions[:1]                  # every image judged against another scene's caption
    s = judge.scores(images, shifted)
    assert s["digit_accuracy"] < 0.3 and s["prompt_accuracy"] < 0.1
    flipped = judge.scores(images.flip(-1), captions)      # mirrored: left and right swap, positions move
    assert flipped["position_accuracy"] < 0.7 and flipped["order_accuracy"] < 0.5
