"""The one place that touches open_clip's ViT internals: token embedding, the blocks, explicit
attention recomputed with each block's own weights, pooling, and the targets read off the heads.

open_clip's blocks call ``nn.MultiheadAttention(need_weights=False)``, so attention probabilities
are recomputed here (``block_forward``; tests check it equals open_clip's output). ``check_tower``
refuses block options this recomputation does not reproduce, so an open_clip upgrade fails loudly
instead of producing maps of a different model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_OPEN_CLIP = ("3.",)
ALL_BLOCKS_COST = (
    "1 forward with explicit attention + 1 backward (fake and real share it; each dimension "
    "map adds one)"
)  # versions whose ViT internals this adapter was checked against


def check_tower(visual: nn.Module) -> None:
    """Raise ValueError when the tower's blocks use options that ``block_forward`` ignores."""
    import open_clip

    if not open_clip.__version__.startswith(SUPPORTED_OPEN_CLIP):
        raise ValueError(
            f"open_clip {open_clip.__version__} is not supported by ASAP's attention adapter "
            f"(checked: {SUPPORTED_OPEN_CLIP}); install open_clip_torch==3.3.0"
        )
    for i, blk in enumerate(visual.transformer.resblocks):
        attn = getattr(blk, "attn", None)
        problems = []
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            problems.append("attention is not a packed nn.MultiheadAttention")
        if not isinstance(getattr(blk, "ln_attn", nn.Identity()), nn.Identity):
            problems.append("scale_attn (ln_attn) is on")
        if any(not hasattr(blk, n) for n in ("ln_1", "ln_2", "ls_1", "ls_2", "mlp")):
            problems.append("unexpected block layout")
        if problems:
            raise ValueError(f"ViT block {i}: {'; '.join(problems)}; ASAP cannot explain it")


def blocks(model) -> list[nn.Module]:
    return list(model.visual.transformer.resblocks)


def tile_grid(model) -> tuple[int, int]:
    """The tower's patch grid: one tile's."""
    g = model.visual.grid_size
    return (g, g) if isinstance(g, int) else tuple(g)


def grid(model) -> tuple[int, int]:
    """The image's patch grid, the shape of its maps: the tiles' grids side by side."""
    gh, gw = tile_grid(model)
    return gh * model.tiles, gw * model.tiles


def untile(model, t: torch.Tensor) -> torch.Tensor:
    """Per-tile patch values (B*k*k, gh*gw, ...) -> the image's (B, k*gh*k*gw, ...), row-major
    over the image's patch grid."""
    k = model.tiles
    if k == 1:
        return t
    gh, gw = tile_grid(model)
    rest = t.shape[2:]
    t = t.reshape(-1, k, k, gh, gw, *rest).transpose(2, 3)  # (B, ty, y, tx, x, ...)
    return t.reshape(t.shape[0], k * gh * k * gw, *rest)


def to_maps(model, cam: torch.Tensor) -> torch.Tensor:
    """Patch relevance per target and tile (n, B*k*k, T-1) -> maps (B, n, gh, gw) of the image."""
    n = cam.shape[0]
    flat = untile(model, cam.permute(1, 2, 0))  # (B, gh*gw, n)
    return flat.permute(0, 2, 1).reshape(flat.shape[0], n, *grid(model))


def to_map(model, m: torch.Tensor) -> torch.Tensor:
    """One map per tile (B*k*k, T-1) -> (B, gh, gw) of the image."""
    return to_maps(model, m[None])[:, 0]


def embed_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, k*S, k*S) -> the first block's input tokens (B*k*k, T, D), CLS first, tile
    by tile (after the encoder's stem: what the tower sees)."""
    return model.visual._embeds(model.tower_input(pixels))


def qkv(block, x: torch.Tensor):
    """Heads' queries, keys, values of a pre-norm block: each (B, H, T, hd)."""
    attn = block.attn
    B, T, D = x.shape
    H = attn.num_heads
    qkv_ = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (B, T, 3D)
    q, k, v = qkv_.view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
    return q, k, v


def attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Softmax attention (B, H, t, T) of queries q (B, H, t, hd) over keys k (B, H, T, hd)."""
    return torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)


def finish_block(block, x: torch.Tensor, probs: torch.Tensor, v: torch.Tensor, rows: slice):
    """The rest of the block for token ``rows`` given attention ``probs`` (B, H, t, T)."""
    B, H, t, _ = probs.shape
    o = (probs @ v).transpose(1, 2).reshape(B, t, -1)  # (B, t, D)
    x = x[:, rows] + block.ls_1(block.attn.out_proj(o))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def block_forward(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An open_clip block with explicit attention: (B,T,D) -> (B,T,D), probs (B,H,T,T)."""
    q, k, v = qkv(block, x)
    probs = attention_probs(q, k)  # (B, H, T, T)
    return finish_block(block, x, probs, v, slice(None)), probs


def run_blocks(model, x: torch.Tensor, blks) -> torch.Tensor:
    """open_clip's own (fused) blocks on batch-first x, whatever the tower's internal layout."""
    batch_first = getattr(model.visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blks:
        x = blk(x)
    return x.transpose(0, 1) if not batch_first else x


def pooled(model, cls_token: torch.Tensor) -> torch.Tensor:
    """Final CLS token (B, D) -> CLIP embedding (B, E), as VisionTransformer._pool + proj (per
    tile)."""
    out = model.visual.ln_post(cls_token)  # LayerNorm acts per token
    return out @ model.visual.proj if model.visual.proj is not None else out


def targets(model, emb: torch.Tensor, n: int):
    """Tiles' embeddings (B*k*k, E) -> the image's embedding (B, E), distilled (B, 16), logit
    (B,), and the first ``n`` signed targets (B, n) of [logit, d00..d15]: the real map comes from
    the logit's gradient with its sign flipped. Gradients of the targets reach every tile through
    the pooling, so a tile's maps are scaled by how much it counts in the image's score."""
    emb, distilled, logit = model.pool_heads(emb)
    return emb, distilled, logit, torch.cat([logit[:, None], distilled], dim=1)[:, :n]


def grads(tgt: torch.Tensor, inputs: list[torch.Tensor], keep: bool = False) -> list[torch.Tensor]:
    """d tgt[:, j] / d input for every target j: each (J, *input.shape). ``keep``: keep the graph
    for another call."""
    J = tgt.shape[1]
    if J == 1:  # one plain backward pass
        return [g[None] for g in torch.autograd.grad(tgt[:, 0].sum(), inputs, retain_graph=keep)]
    eye = torch.eye(J, dtype=tgt.dtype, device=tgt.device)
    grad_out = eye[:, None, :].expand(J, tgt.shape[0], J)  # (J, B, J)
    return list(torch.autograd.grad(tgt, inputs, grad_out, is_grads_batched=True,
                                    retain_graph=keep))  # fmt: skip


def attention_gradients(model, pixels: torch.Tensor, n_targets: int):
    """One forward pass with explicit attention in every block, and the gradients of the first
    ``n_targets`` targets w.r.t. every block's attention: emb, distilled, logit (detached),
    probs (detached) and gradients, per block (B, H, T, T) and (J, B, H, T, T)."""
    with torch.no_grad():
        x = embed_tokens(model, pixels)
    x.requires_grad_(True)  # a frozen model: the graph must start somewhere
    probs = []
    with torch.enable_grad():
        for blk in blocks(model):
            x, p = block_forward(blk, x)
            probs.append(p)
        emb, distilled, logit, tgt = targets(model, pooled(model, x[:, 0]), n_targets)
        gs = grads(tgt, probs)
    detached = (t.detach() for t in (emb, distilled, logit))
    return (*detached, [p.detach() for p in probs], gs)


def signed(g: torch.Tensor) -> torch.Tensor:
    """Per-target gradients (J, ...) of [logit, dims...] -> (J + 1, ...) for [fake, real, dims...]:
    the real target is the negated logit, so its gradient is the negated logit gradient."""
    return torch.cat([g[:1], -g[:1], g[1:]], dim=0)
