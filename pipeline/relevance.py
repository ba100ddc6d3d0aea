"""Relevance maps: gradients of the fake logit (and its negation, and each distilled dimension) with
respect to the attention probabilities of the ViT, combined by Chefer et al.'s rule (2021, "Generic
attention-model explainability"):

    Abar_l = mean_heads((dy/dA_l * A_l)^+),   R <- R + Abar_l @ R,   R_0 = I,

and the CLS row over the patch tokens, R[0, 1:], is the patch-level map.

open_clip's blocks call ``nn.MultiheadAttention(need_weights=False)``, so the probabilities are
recomputed here explicitly with each block's own weights (``block_forward``; tests check it equals
open_clip's output). Gradients stop at the attention tensors: no gradient reaches the pixels.

``maps="last"`` (default; Chefer's CLIP code and the paper use "CLIP's transformer block"): only the
last block. The pooled output reads the CLS token only, so only the CLS query row of the last
block's attention matters (every other row gets zero gradient): we compute that row, run the rest of
the block for the CLS token alone, and take all targets' gradients at once from this small graph.
The result costs about one forward pass. ``maps="all"``: the full multi-layer rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .encoder import ASAPEncoder
from .schema import MAP_NAMES


@dataclass
class Explanation:
    emb: torch.Tensor  # (B, E) CLIP image embedding
    distilled: torch.Tensor  # (B, 16)
    logit: torch.Tensor  # (B,) raw fake logit
    maps: torch.Tensor  # (B, len(MAP_NAMES), gh, gw), non-negative


def _qkv(block, x: torch.Tensor):
    """Heads' queries, keys, values of a pre-norm block: each (B, H, T, hd)."""
    attn = block.attn
    assert attn._qkv_same_embed_dim, "expected a packed in_proj (open_clip ViT blocks)"
    B, T, D = x.shape
    H = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (B, T, 3D)
    q, k, v = qkv.view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
    return q, k, v


def _attend(block, x: torch.Tensor, probs: torch.Tensor, v: torch.Tensor, rows: slice):
    """Finish the block for token ``rows`` given attention ``probs`` (B, H, t, T)."""
    B, H, t, _ = probs.shape
    o = (probs @ v).transpose(1, 2).reshape(B, t, -1)  # (B, t, D)
    x = x[:, rows] + block.ls_1(block.attn.out_proj(o))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def block_forward(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An open_clip block with explicit attention: (B,T,D) -> (B,T,D), probs (B,H,T,T)."""
    q, k, v = _qkv(block, x)
    probs = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)  # (B,H,T,T)
    return _attend(block, x, probs, v, slice(None)), probs


def _blocks(model: ASAPEncoder):
    return list(model.visual.transformer.resblocks)


def _run_blocks(model: ASAPEncoder, x: torch.Tensor, blocks) -> torch.Tensor:
    """open_clip's own blocks on batch-first x, whatever the tower's internal layout."""
    batch_first = getattr(model.visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks:
        x = blk(x)
    return x.transpose(0, 1) if not batch_first else x


def _pooled(model: ASAPEncoder, cls_token: torch.Tensor) -> torch.Tensor:
    """Final CLS token (B, D) -> CLIP embedding (B, E), as VisionTransformer._pool + proj."""
    pooled = model.visual.ln_post(cls_token)  # LayerNorm acts per token
    return pooled @ model.visual.proj if model.visual.proj is not None else pooled


def _targets(model: ASAPEncoder, emb: torch.Tensor):
    distilled, logit = model.heads(emb)
    return distilled, logit, torch.cat([logit[:, None], -logit[:, None], distilled], dim=1)


def _grads(targets: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """d targets[:, j] / d input for every target j at once: each (J, *input.shape)."""
    J = targets.shape[1]
    eye = torch.eye(J, dtype=targets.dtype, device=targets.device)
    grad_out = eye[:, None, :].expand(J, targets.shape[0], J)  # (J, B, J)
    return list(torch.autograd.grad(targets, inputs, grad_out, is_grads_batched=True))


def _grid(model: ASAPEncoder) -> tuple[int, int]:
    g = model.visual.grid_size
    return (g, g) if isinstance(g, int) else tuple(g)


def explain_last(model: ASAPEncoder, pixels: torch.Tensor) -> Explanation:
    """Embeddings and the last block's Chefer maps for a batch of pixels (B, 3, S, S)."""
    blocks = _blocks(model)
    with torch.no_grad():
        x = _run_blocks(model, model.visual._embeds(pixels), blocks[:-1])  # (B, T, D)
        last = blocks[-1]
        q, k, v = _qkv(last, x)  # (B, H, T, hd)
        scores = (q[:, :, :1] * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, 1, T)
        probs = torch.softmax(scores, dim=-1)
    probs.requires_grad_(True)
    with torch.enable_grad():
        cls = _attend(last, x, probs, v, slice(0, 1))[:, 0]  # (B, D)
        emb = _pooled(model, cls)
        distilled, logit, targets = _targets(model, emb)
        (g,) = _grads(targets, [probs])  # (J, B, H, 1, T)
    cam = (g * probs.detach()).clamp(min=0).mean(dim=2)[:, :, 0, 1:]  # (J, B, T-1)
    gh, gw = _grid(model)
    maps = cam.permute(1, 0, 2).reshape(pixels.shape[0], len(MAP_NAMES), gh, gw)
    return Explanation(emb.detach(), distilled.detach(), logit.detach(), maps)


def explain_all(model: ASAPEncoder, pixels: torch.Tensor) -> Explanation:
    """Full multi-layer rollout over every block (costs a backward pass per target)."""
    blocks = _blocks(model)
    with torch.no_grad():
        x0 = model.visual._embeds(pixels)
    with torch.enable_grad():
        x = x0.requires_grad_(True)
        probs = []
        for blk in blocks:
            x, p = block_forward(blk, x)
            probs.append(p)
        emb = _pooled(model, x[:, 0])
        distilled, logit, targets = _targets(model, emb)
        grads = _grads(targets, probs)  # each (J, B, H, T, T)
    J, B, T = targets.shape[1], pixels.shape[0], x0.shape[1]
    R = torch.eye(T, device=pixels.device).expand(J, B, T, T).clone()
    for g, p in zip(grads, probs):
        abar = (g * p.detach()).clamp(min=0).mean(dim=2)  # (J, B, T, T)
        R = R + abar @ R
    gh, gw = _grid(model)
    maps = R[:, :, 0, 1:].permute(1, 0, 2).reshape(B, J, gh, gw)
    return Explanation(emb.detach(), distilled.detach(), logit.detach(), maps)


def explain(model: ASAPEncoder, pixels: torch.Tensor, maps: str = "last") -> Explanation:
    if maps == "last":
        return explain_last(model, pixels)
    if maps == "all":
        return explain_all(model, pixels)
    raise ValueError(f"maps must be 'last' or 'all', got {maps!r}")


@torch.no_grad()
def embed(model: ASAPEncoder, pixels: torch.Tensor):
    """The forward pass alone (the baseline the relevance overhead is measured against)."""
    emb, distilled, logit = model(pixels)
    return emb, distilled, logit
