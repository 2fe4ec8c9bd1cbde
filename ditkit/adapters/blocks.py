"""Residual branches of diffusers block classes whose forward is a known sequence of branches (DiT, PixArt, Wan,
LTX-Video), so per-module caches
(FORA, TaylorSeer, ...) reuse attention and MLP outputs separately and re-gate them with the current step's
modulation, exactly as on ditkit's own blocks. A block of another class, or one using options not written out here,
is one whole-block branch (:class:`~ditkit.adapters.stack.BlockBranch`).

``BLOCK_BRANCHES[class name](block, args, dtype)`` returns the branches or None (not expressible); ``args`` are
the block's call arguments by name, without the tokens, ``dtype`` the tokens' dtype.

``BasicTransformerBlock`` (DiT, PixArt), diffusers 0.42.1, self-attention ``attn1``, optional cross-attention
``attn2``, MLP ``ff``:
- adaLN-Zero (DiT): (shift, scale, gate) x 2 = ``norm1.linear(silu(norm1.emb(t, y)))``; attention on
  ``norm1.norm(x)`` modulated, gated; cross-attention on ``norm2(x)``; MLP on ``norm3(x)`` modulated, gated.
- adaLN-single (PixArt): the six come from ``scale_shift_table + timestep`` ([N, 1, D] each); attention on
  ``norm1(x)`` modulated, gated; cross-attention on x itself, ungated; MLP on ``norm2(x)`` modulated, gated.
"""
from __future__ import annotations

import torch

from ..models.stack import Branch, modulate


def basic_transformer_block(block, args: dict, dtype: torch.dtype) -> list[Branch] | None:
    kind = block.norm_type
    extra = dict(args.get("cross_attention_kwargs") or {})
    if (kind not in ("ada_norm_zero", "ada_norm_single") or block.pos_embed is not None or block.only_cross_attention
            or block._chunk_size is not None or "gligen" in extra):
        return None
    t, text = args.get("timestep"), args.get("encoder_hidden_states")
    if kind == "ada_norm_zero":
        n1 = block.norm1
        emb = n1.linear(n1.silu(n1.emb(t, args.get("class_labels"), hidden_dtype=dtype)))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(6, dim=1)       # [N, D] each
        attn_in = lambda x: modulate(n1.norm(x), shift_msa, scale_msa)
        cross_in, mlp_in = block.norm2, lambda x: modulate(block.norm3(x), shift_mlp, scale_mlp)
    else:
        rows = t.shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            block.scale_shift_table[None] + t.reshape(rows, 6, -1)).chunk(6, dim=1)           # [N, 1, D] each
        attn_in = lambda x: modulate(block.norm1(x), shift_msa, scale_msa)
        cross_in, mlp_in = (lambda x: x), lambda x: modulate(block.norm2(x), shift_mlp, scale_mlp)
    mask = args.get("attention_mask")
    branches = [Branch("attn", attn_in, lambda h: block.attn1(h, attention_mask=mask, **extra), gate_msa,
                       attention=block.attn1)]
    if block.attn2 is not None:
        cross_mask = args.get("encoder_attention_mask")
        branches.append(Branch("cross_attn", cross_in, lambda h: block.attn2(
            h, encoder_hidden_states=text, attention_mask=cross_mask, **extra), attention=block.attn2))
    branches.append(Branch("mlp", mlp_in, block.ff, gate_mlp))
    return branches


def wan_block(block, args: dict, dtype: torch.dtype) -> list[Branch] | None:
    """``WanTransformerBlock``: (shift, scale, gate) x 2 = ``scale_shift_table + temb`` ([N, 1, D], or per token
    [N, T, D] for Wan 2.2 TI2V); self-attention (RoPE) on ``norm1(x)`` modulated, gated; cross-attention on
    ``norm2(x)``, ungated; MLP on ``norm3(x)`` modulated, gated. Bitwise the block's own forward in float32."""
    temb, rope, text = args["temb"], args.get("rotary_emb"), args["encoder_hidden_states"]
    if temb.dim() == 4:
        mods = [m.squeeze(2) for m in (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)]
    else:
        mods = (block.scale_shift_table + temb.float()).chunk(6, dim=1)
    shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mods
    return [Branch("attn", lambda x: modulate(block.norm1(x.float()), shift_msa, scale_msa).type_as(x),
                   lambda h: block.attn1(h, None, None, rope), gate_msa, attention=block.attn1),
            Branch("cross_attn", lambda x: block.norm2(x.float()).type_as(x),
                   lambda h: block.attn2(h, text, None, None), attention=block.attn2),
            Branch("mlp", lambda x: modulate(block.norm3(x.float()), c_shift_msa, c_scale_msa).type_as(x),
                   block.ffn, c_gate_msa)]


def ltx_block(block, args: dict, dtype: torch.dtype) -> list[Branch] | None:
    """``LTXVideoTransformerBlock``: the six from ``scale_shift_table + temb`` ([N, 1, D] or per token);
    self-attention (RoPE) on ``norm1(x)`` modulated, gated; cross-attention (text mask) on x itself, ungated; MLP on
    ``norm2(x)`` modulated, gated."""
    temb, rope = args["temb"], args.get("image_rotary_emb")
    text, mask = args["encoder_hidden_states"], args.get("encoder_attention_mask")
    table = block.scale_shift_table
    ada = table[None, None].to(temb.device) + temb.reshape(temb.shape[0], temb.size(1), table.shape[0], -1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada.unbind(dim=2)
    return [Branch("attn", lambda x: modulate(block.norm1(x), shift_msa, scale_msa),
                   lambda h: block.attn1(hidden_states=h, encoder_hidden_states=None, image_rotary_emb=rope),
                   gate_msa, attention=block.attn1),
            Branch("cross_attn", lambda x: x, lambda h: block.attn2(
                h, encoder_hidden_states=text, image_rotary_emb=None, attention_mask=mask), attention=block.attn2),
            Branch("mlp", lambda x: modulate(block.norm2(x), shift_mlp, scale_mlp), block.ff, gate_mlp)]


BLOCK_BRANCHES = {"BasicTransformerBlock": basic_transformer_block, "WanTransformerBlock": wan_block,
                  "LTXVideoTransformerBlock": ltx_block}
