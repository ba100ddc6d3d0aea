"""Chefer et al.'s gradient-weighted attention rule (2021, "Generic attention-model
explainability"): Abar_l = mean_heads((dy/dA_l * A_l)^+), R <- R + Abar_l @ R from R = I; the CLS
row over the patch tokens is the map.

``chefer_last``: the last block only, as in the paper's CLIP code. The pooled output reads the CLS
token only, so only the CLS query row of the last block's attention gets gradient: that row alone
is computed, the block's MLP runs for the CLS token alone, and all targets' gradients come from
this small graph at about the cost of one forward pass. By the last block every token already
carries "artifact present" (issue 9), so its maps are cheap but often not local.
``chefer_all``: the rule over every block (one backward pass through the whole tower per target)."""

from __future__ import annotations

import torch

from . import Explanation, register
from . import adapter as A


@register("chefer_last", cost="1 forward; 17 targets' gradients through the last block's CLS row",
          passes=1.1, class_specific=True, reference="Chefer et al. 2021, last block")  # fmt: skip
def chefer_last(model, pixels: torch.Tensor, n_maps: int) -> Explanation:
    blks = A.blocks(model)
    with torch.no_grad():
        x = A.run_blocks(model, A.embed_tokens(model, pixels), blks[:-1])  # (B, T, D)
        q, k, v = A.qkv(blks[-1], x)  # (B, H, T, hd)
        probs = A.attention_probs(q[:, :, :1], k)  # (B, H, 1, T): the CLS query row
    probs.requires_grad_(True)
    with torch.enable_grad():
        cls = A.finish_block(blks[-1], x, probs, v, slice(0, 1))[:, 0]  # (B, D)
        emb, distilled, logit, tgt = A.targets(model, A.pooled(model, cls), n_maps - 1)
        (g,) = A.grads(tgt, [probs])  # (J, B, H, 1, T)
    p = probs.detach()
    cam = (A.signed(g) * p).clamp(min=0).mean(dim=2)[:, :, 0, 1:]  # (n_maps, B, T-1)
    maps = A.to_maps(model, cam)
    attn = A.to_map(model, p.mean(dim=1)[:, 0, 1:])  # plain attention, for free
    return Explanation(emb.detach(), distilled.detach(), logit.detach(), maps, attn, last_input=x)


@register("chefer_all", cost=A.ALL_BLOCKS_COST, passes=2.0, class_specific=True,
          reference="Chefer et al. 2021, all blocks")  # fmt: skip
def chefer_all(model, pixels: torch.Tensor, n_maps: int) -> Explanation:
    emb, distilled, logit, probs, gs = A.attention_gradients(model, pixels, n_maps - 1)
    B, T = probs[0].shape[0], probs[0].shape[-1]  # B: tiles of all images
    R = torch.eye(T, device=pixels.device).expand(n_maps, B, T, T).clone()
    for g, p in zip(gs, probs):
        abar = (A.signed(g) * p.detach()).clamp(min=0).mean(dim=2)  # (n_maps, B, T, T)
        R = R + abar @ R
    maps = A.to_maps(model, R[:, :, 0, 1:])
    return Explanation(emb, distilled, logit, maps)


def chefer_all_and_last(model, pixels: torch.Tensor, n_maps: int):
    """``chefer_all``'s fake and real maps and ``chefer_last``'s ``n_maps`` maps (with plain
    attention) from one forward pass, as ``explain`` stores them by default (issue 10: the two
    rules each ran their own forward pass, 3.1 passes in all).

    Blocks before the last run with explicit attention (``chefer_all`` needs every block's);
    the last block runs for the CLS token only, as in ``chefer_last``: the pooled output reads
    the CLS token alone, so its other rows get no gradient in either rule, and the all-blocks
    rule's last step only needs the CLS row of R. Then two backward passes over one graph: all
    targets through the last block (short), the fake logit through every block. The maps equal
    those of the two functions up to float rounding (tests/pipeline/test_explain.py).
    Returns (Explanation with ``chefer_last``'s maps and attention, ``chefer_all``'s fake and
    real maps (B, 2, gh, gw))."""
    blks = A.blocks(model)
    with torch.no_grad():
        x = A.embed_tokens(model, pixels)
    x.requires_grad_(True)  # a frozen model: the graph must start somewhere
    probs = []
    with torch.enable_grad():
        for blk in blks[:-1]:
            x, p = A.block_forward(blk, x)
            probs.append(p)
        q, k, v = A.qkv(blks[-1], x)
        last = A.attention_probs(q[:, :, :1], k)  # (B, H, 1, T): the CLS query row
        probs.append(last)
        cls = A.finish_block(blks[-1], x, last, v, slice(0, 1))[:, 0]
        emb, distilled, logit, tgt = A.targets(model, A.pooled(model, cls), n_maps - 1)
        (g_last,) = A.grads(tgt, [last], keep=True)  # (J, B, H, 1, T)
        g_all = A.grads(tgt[:, :1], probs)  # per block (1, B, H, t, T)
    p_last = last.detach()
    cam = (A.signed(g_last) * p_last).clamp(min=0).mean(dim=2)[:, :, 0, 1:]
    out = Explanation(emb.detach(), distilled.detach(), logit.detach(), A.to_maps(model, cam),
                      A.to_map(model, p_last.mean(dim=1)[:, 0, 1:]))  # fmt: skip
    out.last_input = x.detach()  # for the pattern stage's token descriptor
    T = p_last.shape[-1]
    R = torch.eye(T, device=pixels.device).expand(2, p_last.shape[0], T, T).clone()
    for g, p in zip(g_all[:-1], probs[:-1]):
        abar = (A.signed(g) * p.detach()).clamp(min=0).mean(dim=2)  # (2, B, T, T)
        R = R + abar @ R
    abar = (A.signed(g_all[-1]) * p_last).clamp(min=0).mean(dim=2)  # (2, B, 1, T)
    cls_row = R[:, :, 0] + (abar @ R)[:, :, 0]  # the CLS row of R after the last block
    return out, A.to_maps(model, cls_row[:, :, 1:])
