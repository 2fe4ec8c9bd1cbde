"""Regional compilation (torch.compile of the repeated attention and MLP modules): same outputs as eager, recipes
(caching, attention backends with Python-side decisions, ToCa's observer) keep working and detach exactly."""
import torch
from acceleration_util import tiny_pipe

from ditkit.diffusion.flow import FlowMatching
from ditkit.models.compile import compile_blocks
from ditkit.models.video_dit import VideoDiT, video_dit_config
from ditkit.pipelines.video import VideoPipeline

RECIPES = ["none", "fora", "toca", "topk:min_tokens=0"]


def outputs(pipe, call):
    out = {}
    for spec in RECIPES:
        pipe.set_recipe(None if spec == "none" else spec)
        out[spec] = call(pipe)
        pipe.set_recipe(None)
    return out


def test_compiled_blocks_match_eager_with_every_kind_of_recipe():
    torch.manual_seed(0)
    video = VideoPipeline(VideoDiT(video_dit_config("VideoDiT-T/8", input_size=16, in_channels=1, num_classes=4,
                                                    depth=2, num_frames=4, learn_sigma=False, layout="vdt")).eval(),
                          FlowMatching(1000.0))
    for p in video.model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    cases = [(tiny_pipe(), lambda p: p([1, 2], num_sampling_steps=4)),
             (video, lambda p: p(num_videos=2, num_sampling_steps=4))]
    for pipe, call in cases:
        eager = outputs(pipe, call)
        compile_blocks(pipe.model)
        compiled = outputs(pipe, call)
        for spec in RECIPES:
            torch.testing.assert_close(compiled[spec], eager[spec], atol=2e-4, rtol=0, msg=spec)
        assert not torch.allclose(compiled["fora"], compiled["none"], atol=1e-6)     # the cache did skip
        assert "_ditkit_hooks" not in vars(pipe.model)
