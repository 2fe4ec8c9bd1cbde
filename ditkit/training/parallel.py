"""Training beyond data parallelism: FSDP2 sharding, Ulysses sequence parallelism, activation checkpointing, and
sharded checkpoints through torch.distributed.checkpoint (DCP).

- ``train.parallel: fsdp``: ``fully_shard`` (FSDP2, DTensor parameters on a 1-D device mesh of every process) on
  each unit the forward calls as a module, then on the model root; the EMA copy is sharded the same way, so its
  update stays local. A ditkit model runs its blocks through their branches (:mod:`ditkit.models.stack`), so its
  units are the parameterised children of each block (attention, MLP, adaLN modulation, a VDT temporal norm);
  a diffusers model's units are its blocks. With ``train.bf16`` parameters are gathered in bfloat16 and gradients
  reduced in float32 (FSDP's mixed precision) instead of autocast. On one process the same code runs on a
  one-process group, so a sharded checkpoint resumes at any world size.
- ``train.ulysses_degree``: U processes share each sample's tokens (:mod:`ditkit.parallel.sequence`, with
  differentiable all-to-alls and gathers); every process of a group computes the same loss on the gathered output,
  so the gathers' backward sums U copies of each gradient, which the average over all processes (DDP or FSDP)
  divides back: the update is the one of the global batch on one process. Composes with ``fsdp``.
- ``train.activation_checkpointing``: every block's activations are recomputed in the backward pass instead of
  kept (the ``stack`` hook point: the block stack run through ``torch.utils.checkpoint``).
- Sharded checkpoints: a folder with ``sharded/`` (DCP: model, optimizer and EMA shards, resharded on load to the
  new world size), the consolidated ``model.safetensors`` / ``ema.safetensors`` (what sampling and evaluation read)
  and ``state.pt`` (step, LR schedule, RNG, config), written into a temporary folder that replaces the checkpoint
  only when complete: a killed save leaves the last good checkpoint in place.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict, set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from ..core import checkpoint as ckpt
from ..hooks.points import HookPoints
from ..models.stack import run_blocks
from ..parallel.mesh import ParallelConfig, ParallelState

PARALLEL_KINDS = ("ddp", "fsdp")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class TrainingGroup:
    """The process group of a training run: torchrun's job (gloo on CPU, nccl on CUDA), none for one process, or
    for ``fsdp`` on one process a one-process group that :meth:`release` removes at the end of the run. With
    ``ulysses_degree`` U > 1, groups of U processes share each sample's tokens (Ulysses sequence parallelism,
    ``sequence``) and the batch is split over the ``data_world`` = world / U groups (``data_rank``)."""

    def __init__(self, device: torch.device, parallel: str, ulysses_degree: int = 1):
        self.owned = False
        if dist.is_initialized():
            pass
        elif "RANK" in os.environ:
            if device.type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        elif parallel == "fsdp":
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                    world_size=1)
            self.owned = True
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.sequence = None
        self.data_rank, self.data_world = self.rank, self.world
        if ulysses_degree > 1:
            if not dist.is_initialized():
                raise ValueError(f"train.ulysses_degree={ulysses_degree} needs {ulysses_degree} processes: launch "
                                 f"with torchrun --nproc_per_node {ulysses_degree} -m ditkit.cli train ...")
            config = ParallelConfig(ulysses_degree=ulysses_degree)
            if self.world % ulysses_degree:
                raise ValueError(f"train.ulysses_degree={ulysses_degree} does not divide the world size {self.world}: "
                                 f"launch a multiple of {ulysses_degree} processes")
            self.sequence = ParallelState(config, device)
            self.data_rank, self.data_world = self.sequence.index("dp"), self.sequence.size("dp")

    def local_batch(self, global_batch: int) -> int:
        """Samples per process group of the data split (a clear error unless the batch divides evenly)."""
        if global_batch % self.data_world:
            raise ValueError(f"train.global_batch_size={global_batch} is not divisible by the {self.data_world} "
                             f"data-parallel groups (world size {self.world} / train.ulysses_degree)")
        return global_batch // self.data_world

    def release(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
            self.owned = False


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 gathers one at a time (see the module docstring)."""
    lists = [m for m in model.children() if isinstance(m, nn.ModuleList)]
    if hasattr(model, "stack_blocks") and getattr(model, "embed", None) is not None:
        return [child for blocks in lists for block in blocks for child in block.children()
                if next(child.parameters(), None) is not None]
    return [block for blocks in model.modules() if isinstance(blocks, nn.ModuleList) for block in blocks]


def fully_shard_model(model: nn.Module, device: torch.device, bf16: bool) -> nn.Module:
    """``model`` sharded in place over every process (FSDP2); returns it."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    # units return views (a linear layer's output); ditkit only adds them out of place, so FSDP2's warning about
    # in-place ops on views does not apply
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


class ActivationCheckpointing:
    """The ``stack`` hook: each block's branches run under ``torch.utils.checkpoint`` (recomputed in backward)."""

    name = "activation checkpointing"

    def attach(self, model) -> None:
        if getattr(model, "embed", None) is None or not hasattr(model, "stack_blocks"):
            raise ValueError("train.activation_checkpointing needs a ditkit model (its block stack); diffusers "
                             "classes enable it with their own gradient checkpointing")
        self.model = model
        HookPoints.of(model).set("stack", self, model, "run_stack", self.run_stack)

    def run_stack(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        layout = self.model.token_layout(tokens.shape[1])
        for block in self.model.stack_blocks:
            tokens = checkpoint(lambda x, cond, b=block: run_blocks([b], x, cond, layout), tokens, c,
                                use_reentrant=False)
        return tokens


def grad_norm_value(norm) -> float:
    """A clipping norm (a DTensor under FSDP) as a float."""
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded or plain model, on the CPU (a collective under FSDP: call on every rank)."""
    return get_model_state_dict(model, options=FULL)


def is_sharded(path: Path) -> bool:
    return (path / "sharded").is_dir()


def save_sharded_checkpoint(path: Path, model, ema, opt, write_rest) -> None:
    """A sharded checkpoint folder at ``path``, atomically: every rank writes its DCP shards into a temporary folder,
    rank 0 the consolidated weights and ``write_rest(folder, model_state, ema_state)`` (state.pt), then rank 0
    moves the folder into place."""
    rank = dist.get_rank()
    tmp = path.with_name(f".{path.name}.tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optimizer": optim_state, "ema": get_model_state_dict(ema.model)},
             checkpoint_id=tmp / "sharded")
    full, full_ema = full_state_dict(model), full_state_dict(ema.model)
    if rank == 0:
        write_rest(tmp, full, full_ema)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    dist.barrier()


def load_sharded_checkpoint(path: Path, model, ema, opt) -> None:
    """Model, EMA and optimizer from the DCP shards of checkpoint ``path``, resharded for this world size (plain or
    FSDP modules alike)."""
    model_state, optim_state = get_state_dict(model, opt)
    state = {"model": model_state, "optimizer": optim_state, "ema": get_model_state_dict(ema.model)}
    dcp.load(state, checkpoint_id=path / "sharded")
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    set_model_state_dict(ema.model, state["ema"])


def load_single_file_into_sharded(path: Path, model, ema, opt, optimizer_state: dict) -> None:
    """A single-file checkpoint (model.safetensors, ema.safetensors, state.pt's optimizer, keyed by parameter
    index) into FSDP-sharded modules."""
    set_model_state_dict(model, ckpt.load_weights(path / "model.safetensors"), options=FULL)
    set_model_state_dict(ema.model, ckpt.load_weights(path / "ema.safetensors"), options=FULL)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    by_name = {"state": {names[i]: s for i, s in optimizer_state["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                for g in optimizer_state["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=FULL)
