"""Tiny non-trivial DiTs for the acceleration tests (random weights, adaLN-zero layers re-initialised)."""
import torch

from ditkit.diffusion.flow import FlowMatching
from ditkit.diffusion.gaussian import GaussianDiffusion
from ditkit.models.dit import DiT, dit_config
from ditkit.pipelines.image import DiTPipeline

NEVER_SKIP = ["fora:interval=1", "firstblockcache:threshold=0", "teacache:threshold=0", "magcache:threshold=0",
              "taylorseer:interval=1", "toca:interval=1", "delta_dit:interval=1"]
# settings that skip on any model (adaptive methods at huge thresholds skip whenever their rules allow)
SKIPPING = ["fora", "firstblockcache:threshold=10", "teacache:threshold=10", "magcache:threshold=10,max_skips=3",
            "taylorseer:interval=3,order=2,warmup=1", "toca:ratio=0.3", "delta_dit"]


def tiny_dit(input_size=32, flow=False, seed=0, depth=4) -> DiT:
    torch.manual_seed(seed)
    model = DiT(dit_config("DiT-T/8", input_size=input_size, in_channels=1, num_classes=10, depth=depth,
                           learn_sigma=not flow)).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            torch.nn.init.normal_(module.weight, std=0.05)
            torch.nn.init.normal_(module.bias, std=0.02)
    return model


def tiny_pipe(input_size=32, flow=False, seed=0) -> DiTPipeline:
    process = FlowMatching(1000.0) if flow else GaussianDiffusion.from_config("linear", 1000, True)
    return DiTPipeline(tiny_dit(input_size, flow, seed), process)



def recipe(spec: str, magcache_file=None) -> dict:
    """'name:k=v,...' -> {name: params}, adding ``ratios`` for magcache."""
    from ditkit.acceleration.recipes import parse_recipe
    (name, params), = parse_recipe(spec)
    if name == "magcache":
        params["ratios"] = str(magcache_file)
    return {name: params}
