"""The adapted diffusers transformers: one :class:`~ditkit.adapters.stack.BlockStack` declaration per class (facts
of diffusers 0.42.1). A model not listed here is adapted by passing a declaration of its own to ``accelerate``."""
from __future__ import annotations

from .stack import BlockStack, latent_grid



def packed_grid(model, args) -> tuple[int, int, int]:
    """FLUX: packed tokens [N, T, C] with position ids ``img_ids`` [T, 3] = (0, row, column): (1, rows, T / rows).
    Reads the ids on the host once per ids tensor (pipelines make one per generation), kept on the tensor itself."""
    ids = args["img_ids"]
    grid = getattr(ids, "_ditkit_grid", None)
    if grid is None:
        rows = int(ids[:, 1].max()) + 1
        grid = ids._ditkit_grid = (1, rows, ids.shape[0] // rows)
    return grid


def ltx_grid(model, args) -> tuple[int, int, int]:
    """LTX-Video: packed tokens, latent frames x height x width given to the forward, patched by the config."""
    cfg = model.config
    return (args["num_frames"] // cfg.patch_size_t, args["height"] // cfg.patch_size, args["width"] // cfg.patch_size)


ADAPTERS: dict[str, BlockStack] = {
    # BasicTransformerBlock (adaLN-Zero, each block embeds t and the label); the pipeline batches [cond, uncond]
    "DiTTransformer2DModel": BlockStack(blocks=("transformer_blocks",), grid=latent_grid(), cfg="cond+uncond"),
    # BasicTransformerBlock (adaLN-single), cross-attention attn2 to the text states
    "PixArtTransformer2DModel": BlockStack(blocks=("transformer_blocks",), grid=latent_grid()),
    # ReLU linear self-attention, softmax cross-attention
    "SanaTransformer2DModel": BlockStack(
        blocks=("transformer_blocks",), grid=latent_grid(), self_attention=(),
        attention_unsupported="its self-attention is already ReLU linear attention (no softmax to sparsify)"),
    # joint blocks returning (text, image), the joint attention puts text last; the last block returns (None, image)
    "SD3Transformer2DModel": BlockStack(
        blocks=("transformer_blocks",), grid=latent_grid(), text="encoder_hidden_states", returns=("text", "hidden"),
        self_attention=("attn",), joint="text-last"),
    # dual-stream then single-stream blocks, both called alike and returning (text, image); true CFG: two calls
    "FluxTransformer2DModel": BlockStack(
        blocks=("transformer_blocks", "single_transformer_blocks"), grid=packed_grid, text="encoder_hidden_states",
        returns=("text", "hidden"), self_attention=("attn",), shared=("image_rotary_emb",), cfg="separate",
        joint="text-first"),
    # self-attention attn1 (RoPE), cross-attention attn2; the pipeline calls cond, then uncond
    "WanTransformer3DModel": BlockStack(blocks=("blocks",), grid=latent_grid(), shared=("rotary_emb",),
                                        float_modules=("condition_embedder.time_embedder",), cfg="separate"),
    # input [N, F, C, H, W]; joint blocks returning (image, text)
    "CogVideoXTransformer3DModel": BlockStack(
        blocks=("transformer_blocks",), grid=latent_grid(frames_patch="patch_size_t", frame_dim=1),
        text="encoder_hidden_states", returns=("hidden", "text"), shared=("image_rotary_emb",), joint="text-first"),
    # packed tokens; self-attention attn1 (RoPE), cross-attention attn2 with the text mask
    "LTXVideoTransformer3DModel": BlockStack(blocks=("transformer_blocks",), grid=ltx_grid),
    # dual-stream then single-stream blocks returning (image, text); joint attention with a text padding mask
    "HunyuanVideoTransformer3DModel": BlockStack(
        blocks=("transformer_blocks", "single_transformer_blocks"), grid=latent_grid(frames_patch="patch_size_t"),
        text="encoder_hidden_states", returns=("hidden", "text"), self_attention=("attn",),
        shared=("freqs_cis",), cfg="separate", joint="text-last"),
}


def spec_for(model) -> BlockStack:
    """The declaration for ``model``'s class, or a clear error saying how to declare one."""
    name = type(model).__name__
    if name not in ADAPTERS:
        why = NOT_ADAPTED.get(name, "")
        raise ValueError(f"ditkit has no adapter for {name}{why} (adapted: {', '.join(sorted(ADAPTERS))}); declare "
                         f"its blocks: accelerate(model, recipe, spec=BlockStack(blocks=('transformer_blocks',), "
                         f"grid=latent_grid(), ...)) (see ditkit.adapters.BlockStack)")
    return ADAPTERS[name]


NOT_ADAPTED = {"LatteTransformer3DModel": ": its forward interleaves the spatial and temporal block lists with "
                                          "reshapes and a position embedding between them, which a block-list "
                                          "declaration cannot express"}
