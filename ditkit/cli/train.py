"""``ditkit train --config FILE [--set key=value ...] [--resume auto|PATH | --overwrite] [--threads N]``."""
from __future__ import annotations

import time

import yaml

from ..core.config import load_config, to_dict
from ..core.configs import TextTrainConfig, TrainConfig, VideoTrainConfig, config_kind
from ..training.text import train_text
from ..training.trainer import train
from ..training.video import train_video
from .flags import add_threads_arg, positive_int


def run(args):
    kind = config_kind(args.config)
    schema, trainer = {"image": (TrainConfig, train), "video": (VideoTrainConfig, train_video),
                       "text": (TextTrainConfig, train_text)}[kind]
    cfg = load_config(schema, args.config, args.set)
    if args.threads:
        cfg.train.num_threads = args.threads
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return
    t0 = time.time()
    out = trainer(cfg, resume=args.resume, progress=False if args.no_progress else None,
                  max_steps=args.max_steps, overwrite=args.overwrite)
    print(f"wrote {out} ({time.time() - t0:.1f} s)")


def register(sub):
    t = sub.add_parser("train", help="train a DiT, a VideoDiT (model.name VideoDiT-...) or a text-to-image PixArt (model.name PixArt) from a config file")
    t.add_argument("--config", required=True, help="YAML config (see configs/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    t.add_argument("--resume", metavar="auto|PATH", help="resume from the latest checkpoint (auto) or a checkpoint folder")
    t.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run in train.results_dir (checkpoints, metrics.jsonl, model.safetensors, "
                        "config.yaml) and start again")
    t.add_argument("--max-steps", type=positive_int, help="stop after this many steps without changing the LR schedule")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    add_threads_arg(t)
    t.set_defaults(fn=run)
