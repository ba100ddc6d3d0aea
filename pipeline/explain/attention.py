"""Gradient-free attention maps, the same for every target: plain last-block CLS attention (the
baseline every method must beat), and attention rollout (Abnar & Zuidema 2020, "Quantifying
attention flow in transformers"): R = prod_l (0.5 A_l + 0.5 I), rows renormalised, heads averaged;
the CLS row over the patches is the map."""

from __future__ import annotations

import torch

from . import Explanation, register
from . import adapter as A


def _outputs(model, emb: torch.Tensor):
    return model.pool_heads(emb)


@register("attention", cost="1 forward", passes=1.0, class_specific=False,
          reference="last-block CLS attention, averaged over heads")  # fmt: skip
@torch.no_grad()
def attention(model, pixels: torch.Tensor, n_maps: int) -> Explanation:
    blks = A.blocks(model)
    x = A.run_blocks(model, A.embed_tokens(model, pixels), blks[:-1])  # (B, T, D)
    q, k, v = A.qkv(blks[-1], x)
    probs = A.attention_probs(q[:, :, :1], k)  # (B, H, 1, T)
    cls = A.finish_block(blks[-1], x, probs, v, slice(0, 1))[:, 0]
    attn = A.to_map(model, probs.mean(dim=1)[:, 0, 1:])
    maps = attn[:, None].expand(-1, n_maps, -1, -1).contiguous()
    return Explanation(*_outputs(model, A.pooled(model, cls)), maps, attn)


@register("rollout", cost="1 forward with explicit attention", passes=1.2, class_specific=False,
          reference="Abnar & Zuidema 2020")  # fmt: skip
@torch.no_grad()
def rollout(model, pixels: torch.Tensor, n_maps: int) -> Explanation:
    x = A.embed_tokens(model, pixels)
    B, T = x.shape[:2]
    R = torch.eye(T, device=x.device).expand(B, T, T)
    for blk in A.blocks(model):
        x, p = A.block_forward(blk, x)
        a = 0.5 * p.mean(dim=1) + 0.5 * torch.eye(T, device=x.device)  # (B, T, T)
        R = (a / a.sum(dim=-1, keepdim=True)) @ R
    m = A.to_map(model, R[:, 0, 1:])
    maps = m[:, None].expand(-1, n_maps, -1, -1).contiguous()
    return Explanation(*_outputs(model, A.pooled(model, x[:, 0])), maps)
