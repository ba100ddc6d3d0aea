"""Maps from the gradients of every block's attention, without Chefer's product with A:

``legrad`` (Bousselham et al. 2024, "LeGrad: an explainability method for vision transformers via
feature formation sensitivity"): each block's CLS token is read out through the final norm,
projection and heads (a "logit lens"), and that block's own score is differentiated with respect
to that block's attention: E_l = mean over heads and query rows of (dS_l/dA_l)^+; the map is the
mean of E_l over blocks. Each block's input is detached, so one backward pass through the tower
gives every block its own gradient (a block's score depends on no later attention).

``attngrad``: the same reduction of the *final* score's gradient at every block (the variant
measured in issue 9's bake-off)."""

from __future__ import annotations

import torch

from . import Explanation, register
from . import adapter as A


def _reduce(gs: list[torch.Tensor], model) -> torch.Tensor:
    """Per-block gradients (J, B, H, T, T) -> mean over blocks of mean_{heads, rows}(grad^+)."""
    acc = 0
    for g in gs:
        acc = acc + A.signed(g).clamp(min=0).mean(dim=(2, 3))[..., 1:]  # (n_maps, B, T-1)
    return A.to_maps(model, acc / len(gs))


@register("legrad", cost="1 forward with explicit attention + 1 backward (each block alone)",
          passes=2.5, class_specific=True, reference="Bousselham et al. 2024")  # fmt: skip
def legrad(model, pixels: torch.Tensor, n_maps: int) -> Explanation:
    with torch.no_grad():
        x = A.embed_tokens(model, pixels)
    probs, scores = [], 0
    with torch.enable_grad():
        for blk in A.blocks(model):
            x, p = A.block_forward(blk, x.detach().requires_grad_(True))
            probs.append(p)
            emb, distilled, logit, tgt = A.targets(model, A.pooled(model, x[:, 0]), n_maps - 1)
            scores = scores + tgt  # block l's score reaches only block l's attention
        gs = A.grads(scores, probs)
    return Explanation(emb.detach(), distilled.detach(), logit.detach(),
                       _reduce(gs, model))  # fmt: skip


@register("attngrad", cost=A.ALL_BLOCKS_COST, passes=2.0, class_specific=True,
          reference="issue 9 bake-off, LeGrad-style")  # fmt: skip
def attngrad(model, pixels: torch.Tensor, n_maps: int) -> Explanation:
    emb, distilled, logit, _, gs = A.attention_gradients(model, pixels, n_maps - 1)
    return Explanation(emb, distilled, logit, _reduce(gs, model))
