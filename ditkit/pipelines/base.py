"""What the image and video pipelines share: finding a model file (bundled name, file or results folder), loading a
ditkit model file (float or quantized), rebuilding a trained model for another canvas, and the :class:`Pipeline`
base class with its one denoising core."""
from __future__ import annotations

from pathlib import Path

import torch

from ..acceleration.attention.base import AttentionMethod
from ..acceleration.quant.export import build_quantized
from ..acceleration.recipes import Recipe
from ..core import checkpoint as ckpt
from ..diffusion.flow import FlowMatching
from ..diffusion.samplers import FLOW_SAMPLERS, NoiseSource, sample
from ..models.attention import TokenLayout
from ..models.dit import DiT, DiTConfig
from ..models.interop.diffusers_trainable import FORMAT as DIFFUSERS_FORMAT
from ..models.interop.diffusers_trainable import VIDEO_FORMAT as DIFFUSERS_VIDEO_FORMAT
from ..models.video_dit import VideoDiT, VideoDiTConfig
from ..parallel.cfg import CfgParallel
from ..parallel.mesh import ParallelConfig, ParallelState, all_gather_rows
from ..parallel.sequence import SequenceParallel, split

ASSETS = Path(__file__).parent.parent / "assets"


def bundled_models() -> list[str]:
    return sorted(p.stem for p in ASSETS.glob("*.safetensors") if (ASSETS / f"{p.stem}.json").is_file()
                  and not p.stem.endswith("classifier"))


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A bundled model name (e.g. 'mnist-dit'), a .safetensors file, a training results folder (its exported EMA
    model) or a training checkpoint folder (its EMA weights, ``ema.safetensors``, as DiT samples)."""
    p = Path(name_or_path)
    if p.is_dir() and (p / "ema.safetensors").is_file():
        return p / "ema.safetensors"
    if p.is_dir() and (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    if p.is_file():
        return p
    if (ASSETS / f"{name_or_path}.safetensors").is_file():
        return ASSETS / f"{name_or_path}.safetensors"
    raise FileNotFoundError(f"no model {name_or_path!r}: not a file, a results folder with model.safetensors, a "
                            f"checkpoint folder with ema.safetensors, nor a bundled model (bundled: "
                            f"{', '.join(bundled_models()) or 'none'})")


def is_video_model(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` (bundled name, file, results folder) is a ditkit VideoDiT file."""
    try:
        path = resolve_model_path(name_or_path)
    except FileNotFoundError:
        return False
    return path.suffix == ".safetensors" and ckpt.read_metadata(path).get("format") in (VideoDiT.format_name,
                                                                                     DIFFUSERS_VIDEO_FORMAT)


# What to use for a model file of each format, when a command for another kind was given it
FORMAT_COMMANDS = {DiT.format_name: "it is an image DiT: sample it with `ditkit generate` (scores: `ditkit eval`)",
                   VideoDiT.format_name: "it is a video DiT: sample it with `ditkit generate-video --task ...` "
                                         "(scores: `ditkit eval --task ...`)",
                   DIFFUSERS_FORMAT: "it is a diffusers transformer trained by ditkit: sample its "
                                                   "diffusers folder, <results folder>/diffusers",
                   "ditkit-pixart": "it is a text-to-image model: sample it with `ditkit generate --prompt ...` "
                                    "(scores: `ditkit eval --prompts FILE`)"}


def load_ditkit_model(path: Path, model_cls, config_cls, device="cpu") -> tuple:
    """A ditkit safetensors file of ``model_cls`` (float or quantized) -> (model in eval mode, metadata);
    a file of another kind is an error naming its format and the command for it."""
    meta = ckpt.read_metadata(path)
    found = meta.get("format")
    if found != model_cls.format_name:
        hint = FORMAT_COMMANDS.get(found, "it is not a ditkit model file (an official DiT .pt checkpoint loads "
                                          "with --model-name, e.g. DiT-XL/2)")
        raise ValueError(f"{path} is not a ditkit {model_cls.__name__} file (metadata format {found!r}): {hint}")
    build = lambda: model_cls(config_cls(**meta["dit_config"]))
    if meta.get("quantization"):                # int8/int4 layers, never materialising the float weights
        model = build_quantized(build, meta["quantization"])
    else:
        model = build()
    ckpt.load_state_dict_strict(model, ckpt.load_weights(path), str(path), optional=("pos_embed",))
    return model.to(device).eval(), meta


def model_on_canvas(name: str, layout: TokenLayout):
    """A trained model (bundled name or file) rebuilt for ``layout`` (frames x token grid; pos_embed recomputed for
    the canvas); returns (model, 'video' | 'image', file metadata), or None if there is no such model."""
    try:
        path = resolve_model_path(name)
    except FileNotFoundError:
        return None
    meta = ckpt.read_metadata(path)
    cfg = dict(meta["dit_config"])
    p = cfg["patch_size"]
    cfg["input_size"] = [layout.height * p, layout.width * p]
    if "num_frames" in cfg:
        cfg["num_frames"] = layout.frames * cfg.get("tubelet", 1)
        model, kind = VideoDiT(VideoDiTConfig(**cfg)), "video"
    else:
        model, kind = DiT(DiTConfig(**cfg)), "image"
    weights = {k: v for k, v in ckpt.load_weights(path).items() if k != "pos_embed"}    # sin-cos, per canvas
    ckpt.load_state_dict_strict(model, weights, str(path), optional=("pos_embed",))
    return model.eval(), kind, meta


class Pipeline:
    """What the image and video pipelines share: a model implementing the block-stack contract, its diffusion
    process, the acceleration recipe applied to it, and one denoising core (:meth:`denoise`)."""

    def __init__(self, model, process, autoencoder=None, metadata: dict | None = None):
        self.model, self.process, self.autoencoder = model, process, autoencoder
        self.metadata = metadata or {}
        self.recipe = Recipe()
        self.parallel: ParallelState | None = None
        self.sequence_parallel: SequenceParallel | None = None

    def set_recipe(self, recipe=None) -> "Pipeline":
        """Apply an acceleration recipe (string, dict, list or Recipe) to every later call; None removes it. The
        recipe's ``prepare`` (calibration on the float model's trajectories: quantization) generates with no recipe
        applied, and on each process alone (same inputs everywhere, so every process calibrates alike)."""
        self.recipe.detach(self.model)
        recipe = recipe if isinstance(recipe, Recipe) else Recipe(recipe)
        self._check_parallel(recipe, self.parallel)
        self.recipe = Recipe()
        state = self._pause_parallel()
        try:
            recipe.prepare(self)
        finally:
            self._resume_parallel(state)
        recipe.attach(self.model)
        self.recipe = recipe
        return self

    def set_parallel(self, config: ParallelConfig | None = None) -> "Pipeline":
        """Run every later call on the processes of a torchrun job: ``ParallelConfig(ulysses_degree, ring_degree,
        cfg_parallel)`` (the rest of the world size splits the samples); None: this process alone. Every process
        returns the whole output."""
        config = config if config is not None and (config.degree > 1 or torch.distributed.is_initialized()) else None
        if config is None:
            return self._resume_parallel(None)
        state = ParallelState(config, self.device)
        self._check_parallel(self.recipe, state)
        return self._resume_parallel(state)

    @staticmethod
    def _check_parallel(recipe: Recipe, state: ParallelState | None) -> None:
        if state is None or state.size("ring") == 1:
            return
        sparse = [m.name for m in recipe.methods if isinstance(m, AttentionMethod)]
        if sparse:
            raise ValueError(f"{', '.join(sparse)} need(s) every key of a query at once, which ring attention does "
                             f"not give: use --ulysses-degree instead of --ring-degree with attention backends")

    def _pause_parallel(self) -> ParallelState | None:
        state = self.parallel
        self._resume_parallel(None)
        return state

    def _resume_parallel(self, state: ParallelState | None) -> "Pipeline":
        if self.sequence_parallel is not None:
            self.sequence_parallel.detach(self.model)
            self.sequence_parallel = None
        self.parallel = state
        if state is not None and state.config.sequence_degree > 1:
            self.sequence_parallel = SequenceParallel(state)
            self.sequence_parallel.attach(self.model)
        return self

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs and shows progress (rank 0, or no parallelism)."""
        return self.parallel is None or self.parallel.is_main

    def sample_rows(self, num_samples: int) -> range:
        """The samples this process generates: all, or its data-parallel share (contiguous; seeds stay seed + i)."""
        if self.parallel is None or self.parallel.size("dp") == 1:
            return range(num_samples)
        if num_samples < self.parallel.size("dp"):
            raise ValueError(f"{num_samples} sample(s) cannot be split over {self.parallel.size('dp')} data-parallel "
                             f"process groups: generate at least {self.parallel.size('dp')}, or raise the parallel "
                             f"degrees so their product is the world size")
        sizes = split(num_samples, self.parallel.size("dp"))
        start = sum(sizes[:self.parallel.index("dp")])
        return range(start, start + sizes[self.parallel.index("dp")])

    def gather_samples(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Every process's share (``sample_rows``) -> all ``num_samples`` outputs, on every process."""
        if self.parallel is None or self.parallel.size("dp") == 1:
            return x
        sizes = split(num_samples, self.parallel.size("dp"))
        return all_gather_rows(x.to(self.device), sizes, 0, self.parallel.group("dp")).to(x.device)

    def guidance_split(self, model_fn):
        """(network callable, branch callback) for a guided model: CFG-parallel halves, or as given."""
        if self.parallel is None or not self.parallel.config.cfg_parallel:
            return model_fn, self.recipe.begin_branch
        split_fn = CfgParallel(model_fn, self.parallel, self.recipe.begin_branch)
        return split_fn, split_fn.branch

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @property
    def default_sampler(self) -> str:
        return FLOW_SAMPLERS[0] if isinstance(self.process, FlowMatching) else "ddim"

    def denoise(self, model_fn, noise: NoiseSource, sample_shape: tuple[int, ...], num_sampling_steps: int,
                sampler: str, eta: float = 0.0, progress: bool = False, step_callback=None,
                clip_denoised: bool = False) -> torch.Tensor:
        """Sample [len(noise seeds), *sample_shape] from ``model_fn(x, t)``, a guided model (CFG, history guidance).
        The recipe is told the generation and every step; the guidance and the recipe the host timestep of every
        call, so their decisions read nothing from the device."""
        def timestep(t: float):
            model_fn.set_timestep(t)
            self.recipe.set_timestep(t)

        self.recipe.reset(num_sampling_steps)
        return sample(model_fn, noise.randn(*sample_shape), self.process, sampler, num_sampling_steps, noise, eta=eta,
                      progress=progress and self.is_main, step_callback=self._step_callback(step_callback), clip_denoised=clip_denoised,
                      timestep_callback=timestep)

    def _step_callback(self, user_callback):
        if not self.recipe and user_callback is None:
            return None

        def callback(step: int, num_steps: int):
            self.recipe.begin_step(step, num_steps)
            if user_callback is not None:
                user_callback(step, num_steps)
        return callback
