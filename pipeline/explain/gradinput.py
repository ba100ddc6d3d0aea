"""Gradient x input on the patch tokens (Shrikumar et al. 2016; Ancona et al. 2018): the first
block's input tokens times the target's gradient with respect to them, summed over channels;
positive part. Unlike the attention rules it sees every block, including the first, where a
local trace is still local (issue 9)."""

from __future__ import annotations

import torch

from . import Explanation, register
from . import adapter as A


@register("gradinput", cost="1 forward + 1 backward through the tower per target", passes=2.5,
          class_specific=True, reference="Shrikumar et al. 2016, on patch tokens")  # fmt: skip
def gradinput(model, pixels: torch.Tensor, n_maps: int) -> Explanation:
    with torch.no_grad():
        x0 = A.embed_tokens(model, pixels)
    x0.requires_grad_(True)
    with torch.enable_grad():
        x = A.run_blocks(model, x0, A.blocks(model))
        emb, distilled, logit, tgt = A.targets(model, A.pooled(model, x[:, 0]), n_maps - 1)
        (g,) = A.grads(tgt, [x0])  # (J, B, T, D)
    contrib = (A.signed(g) * x0.detach()).sum(dim=-1).clamp(min=0)[..., 1:]  # (n_maps, B, T-1)
    maps = A.to_maps(model, contrib)
    return Explanation(emb.detach(), distilled.detach(), logit.detach(), maps)
