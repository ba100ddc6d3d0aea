"""Occlusion (Zeiler & Fergus 2014): the causal reference. Each patch, with its neighbours in a
``window`` x ``window`` block (a trace is not aligned with the patch grid), is replaced by the
same pixels of a heavily blurred copy (pipeline.perturb's masking) and the image re-scored; a
patch's relevance to a target is how much the target drops. Every target comes from the same
re-scoring, at the cost of one forward pass per patch: for selected images, and as the yardstick
of ``benchmarks/faithfulness.py``."""

from __future__ import annotations

import torch

from . import Explanation, register
from . import adapter as A

WINDOW = 3  # patches per side of the occluded block, centred on the patch it scores
CHUNK = 512  # masked images per forward pass


@register("occlusion", cost="1 forward per patch (64 for an 8x8 grid)", passes=65.0,
          class_specific=True, reference="Zeiler & Fergus 2014")  # fmt: skip
@torch.no_grad()
def occlusion(model, pixels: torch.Tensor, n_maps: int, window: int = WINDOW) -> Explanation:
    from ..perturb import blurred, masked

    gh, gw = A.grid(model)
    n_cells = gh * gw
    emb, distilled, logit = model(pixels)
    base = torch.cat([logit[:, None], distilled], dim=1)[:, : n_maps - 1]  # (B, J)
    cells = torch.zeros(n_cells, 1, gh, gw, device=pixels.device)
    cells.view(n_cells, -1)[torch.arange(n_cells), torch.arange(n_cells)] = 1
    cells = torch.nn.functional.max_pool2d(cells, window, 1, window // 2)[:, 0] > 0  # (n, gh, gw)
    ref = blurred(model, pixels)
    drops = []
    for b in range(len(pixels)):
        out = []
        for s in range(0, n_cells, CHUNK):
            m = cells[s : s + CHUNK]
            x = masked(pixels[b : b + 1].expand(len(m), -1, -1, -1), ref[b : b + 1], m)
            _, d, z = model(x)
            out.append(torch.cat([z[:, None], d], dim=1)[:, : n_maps - 1])
        drops.append(base[b] - torch.cat(out))  # (n_cells, J)
    drop = torch.stack(drops).permute(2, 0, 1)  # (J, B, n_cells)
    maps = A.signed(drop).clamp(min=0).permute(1, 0, 2).reshape(len(pixels), n_maps, gh, gw)
    return Explanation(emb, distilled, logit, maps)
