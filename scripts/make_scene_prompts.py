"""Write the default held-out prompt set of ``ditkit eval --prompts`` (ditkit/assets/mnist-scene-prompts.txt):
captions of held-out scenes (split 'heldout', scene seed 1) that occur nowhere among the captions a training config
draws (every scene of ``train.steps x train.global_batch_size``, as ``ditkit.training.text`` draws them), distinct.

    python scripts/make_scene_prompts.py --config configs/mnist-t2i.yaml --num-prompts 300 --steps 16000

A calibration set for choices such as the guidance scale, disjoint from it: ``--seed 2 --num-prompts 80 --steps 16000
--exclude ditkit/assets/mnist-scene-prompts.txt --out out/t2i/calibration-prompts.txt``.
"""
from __future__ import annotations

import argparse

from tqdm import tqdm

from ditkit.core.config import load_config
from ditkit.core.configs import TextTrainConfig
from ditkit.core.outputs import write_text
from ditkit.data.scenes import CaptionedScenes
from ditkit.evaluation.text import HELDOUT_PROMPTS
from ditkit.pipelines.text import read_prompts_file

SEED = 1


def training_captions(cfg: TextTrainConfig, steps: int) -> set[str]:
    """Every caption of the scenes ``steps`` steps of a run of ``cfg`` train on."""
    scenes = CaptionedScenes("train", cfg.data.pairs, cfg.data.omit, seed=cfg.train.seed)
    total = steps * cfg.train.global_batch_size
    return {scenes.caption(i) for i in tqdm(range(total), desc="training captions", mininterval=5)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/mnist-t2i.yaml")
    p.add_argument("--num-prompts", type=int, default=300)
    p.add_argument("--out", default=str(HELDOUT_PROMPTS))
    p.add_argument("--seed", type=int, default=SEED, help="scene seed of the held-out scenes captioned")
    p.add_argument("--steps", type=int, help="training steps whose captions are excluded (default: the config's; "
                                             "more keeps the set held out for longer runs)")
    p.add_argument("--exclude", help="a prompts file none of whose prompts may be drawn (e.g. the evaluation set)")
    args = p.parse_args(argv)
    cfg = load_config(TextTrainConfig, args.config, [])
    steps = args.steps or cfg.train.steps
    train = training_captions(cfg, steps)
    seen = train | (set(read_prompts_file(args.exclude)) if args.exclude else set())
    held = CaptionedScenes("heldout", cfg.data.pairs, cfg.data.omit, seed=args.seed)
    prompts: list[str] = []
    index = 0
    while len(prompts) < args.num_prompts:
        text = held.caption(index)
        if text not in seen and text not in prompts:
            prompts.append(text)
        index += 1
    header = (f"# {len(prompts)} held-out prompts of captioned MNIST scenes, none among the {len(train)} distinct "
              f"captions of the {steps * cfg.train.global_batch_size} training scenes of {steps} steps of "
              f"{args.config}{', nor in ' + args.exclude if args.exclude else ''} (held-out scenes "
              f"0..{index - 1}, seed {args.seed}); written by scripts/make_scene_prompts.py\n")
    print(f"wrote {write_text(args.out, header + ''.join(p + chr(10) for p in prompts))} ({index} held-out scenes "
          f"drawn, {len(train)} distinct training captions)")


if __name__ == "__main__":
    main()
