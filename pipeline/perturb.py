"""Counterfactual perturbations on the model's input grid: mask chosen patches, re-score, and the
deletion / insertion curves that measure how faithful a relevance map is (Petsiuk et al. 2018,
"RISE"; the positive/negative perturbation test of Chefer et al. 2021).

Masking replaces a patch with the same patch of a reference image: a strongly blurred copy
(Gaussian, sigma = half a patch) plus the image's own fine residual (image minus a 1 px blur) with
its pixels shuffled across the image. The blur removes the local structure of a trace and adds no
edges or flat grey squares; the shuffled residual keeps the image's own noise level, so the masked
patches are not smoother than the rest. A plain blur was read as evidence by a detector that had
learned "smooth like an autoencoder's output": masking then *raised* p(fake) (the demo's pattern
impacts down to -0.15, issue 9). ``tests/pipeline/test_patterns.py`` checks that masking random
patches barely moves p(fake), so a pattern's impact is not an artifact of the masking itself."""

from __future__ import annotations

import functools

import numpy as np
import torch

from .encoder import ASAPEncoder
from .explain import adapter as A

SHUFFLE_SEED = 0  # the residual's pixel permutation: the same for every image and run


def _blur_matrix(n: int, k: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix of a 1-D blur with kernel ``k`` and a reflected border (torch's "reflect"
    padding): row i holds the weights of the pixels that output i averages."""
    half = len(k) // 2
    if half >= n:
        raise ValueError(f"a blur of {len(k)} px needs images larger than {half} px, got {n}")
    src = torch.arange(n)[:, None] + torch.arange(-half, half + 1)[None, :]  # (n, size)
    src = src.abs()  # reflect at 0: -1 -> 1
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)  # and at n - 1: n -> n - 2
    m = torch.zeros(n, n, dtype=k.dtype)
    m.scatter_add_(1, src, k.expand(n, -1).contiguous())
    return m


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` of (B, C, H, W) (the same kernel and reflected border) as
    two matrix products, one per axis: the masking reference's 25 x 25 blur, a depthwise
    convolution, was the largest cost of the pattern stage (issue 10)."""
    rows = _blur_on(x.shape[-2], size, sigma, x.device, x.dtype)
    cols = _blur_on(x.shape[-1], size, sigma, x.device, x.dtype)
    return rows @ x @ cols.T


@functools.lru_cache(maxsize=64)
def _blur_on(n: int, size: int, sigma: float, device: torch.device, dtype) -> torch.Tensor:
    """The blur matrix, made once per shape and device: no host-to-device copy per batch (the
    encode loop calls this for every batch, issue 10)."""
    half = size // 2
    t = torch.linspace(-half, half, size, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return _blur_matrix(n, k / k.sum()).to(device, dtype)


@functools.lru_cache(maxsize=16)
def _shuffle_on(n: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(SHUFFLE_SEED)
    return torch.randperm(n, generator=gen).to(device)


def blurred(model: ASAPEncoder, pixels: torch.Tensor) -> torch.Tensor:
    """The masking reference of normalised pixels (B, 3, S, S): a heavily blurred copy plus the
    fine residual with its pixel positions shuffled (one fixed permutation, all channels alike)."""
    gh, _ = A.grid(model)
    size = pixels.shape[-1]
    sigma = max(size / gh / 2, 1.0)
    k = int(2 * round(3 * sigma) + 1)
    coarse = gaussian_blur(pixels, k, sigma)
    fine = pixels - gaussian_blur(pixels, 5, 1.0)
    perm = _shuffle_on(fine.shape[-2] * fine.shape[-1], pixels.device)
    shuffled = fine.flatten(2)[:, :, perm].reshape(fine.shape)
    return coarse + shuffled


def patch_mask(keep: torch.Tensor, size: int) -> torch.Tensor:
    """Grid mask (B, gh, gw) of patches to replace -> pixel mask (B, 1, S, S)."""
    return torch.nn.functional.interpolate(keep[:, None].float(), size=(size, size), mode="nearest")


def masked(pixels, reference, grid_mask) -> torch.Tensor:
    """pixels with the patches where grid_mask (B, gh, gw) is True taken from reference."""
    m = patch_mask(grid_mask, pixels.shape[-1])
    return pixels * (1 - m) + reference * m


@torch.no_grad()
def p_fake(model: ASAPEncoder, pixels: torch.Tensor) -> torch.Tensor:
    _, _, logit = model(pixels)
    return model.p_fake(logit)


@torch.no_grad()
def tokens_and_attention(model: ASAPEncoder, pixels: torch.Tensor):
    """Last-block patch tokens (B, gh*gw, D) and plain attention (B, gh, gw): the last block's
    CLS-to-patch attention averaged over heads, with no gradients (the baseline map)."""
    blocks = A.blocks(model)
    x = A.run_blocks(model, A.embed_tokens(model, pixels), blocks[:-1])  # (B, T, D)
    q, k, _ = A.qkv(blocks[-1], x)  # (B, H, T, hd)
    attn = A.attention_probs(q[:, :, :1], k).mean(dim=1)[:, 0, 1:]  # (B, T-1)
    out = A.run_blocks(model, x, blocks[-1:])  # (B*k*k, T, D)
    return A.untile(model, out[:, 1:]), A.to_map(model, attn)


CURVE_BATCH = 256


@torch.no_grad()
def perturbation_curves(model, pixels, order: torch.Tensor, steps: int, insertion: bool):
    """p(fake) as the patches are removed (deletion) or revealed on the blurred image (insertion)
    in ``order`` (B, n_patches; most relevant first): (B, steps + 1) for fractions 0..1."""
    return curves_of(model, pixels, [(order, insertion)], steps)[0]


@torch.no_grad()
def curves_of(model, pixels, jobs: list[tuple[torch.Tensor, bool]], steps: int) -> list:
    """The curves of several ``(order, insertion)`` jobs on the same images: one (B, steps + 1)
    tensor per job, as :func:`perturbation_curves` gives each. Every step of every job and image
    goes through the model in as few passes as possible, at most ``CURVE_BATCH`` images each
    (a pass per step of a few images left the CPU mostly idle, and so did a pass per job for
    the one image a partition samples at scale: issue 10)."""
    B = pixels.shape[0]
    if not jobs or B == 0:
        return [pixels.new_zeros((B, steps + 1)) for _ in jobs]
    n = jobs[0][0].shape[1]
    gh, gw = A.grid(model)
    ref = blurred(model, pixels)
    ranks = torch.empty((len(jobs), B, n), dtype=torch.long, device=pixels.device)
    for j, (order, _) in enumerate(jobs):
        ranks[j].scatter_(1, order, torch.arange(n, device=order.device).expand(B, n))
    inserts = torch.tensor([bool(ins) for _, ins in jobs], device=pixels.device)
    fractions = torch.tensor([round(n * s / steps) for s in range(steps + 1)], device=pixels.device)
    # (job, step) pairs in job-major order; each pair is B images
    pairs = torch.cartesian_prod(torch.arange(len(jobs)), torch.arange(steps + 1))
    pairs = pairs.to(pixels.device)
    per_pass = max(1, CURVE_BATCH // B)
    out = []
    for c in range(0, len(pairs), per_pass):
        jj, ss = pairs[c : c + per_pass].T
        k = len(jj)
        top = ranks[jj] < fractions[ss][:, None, None]  # (k, B, n): the first share of each order
        m = patch_mask(top.reshape(-1, gh, gw), pixels.shape[-1])  # (k*B, 1, S, S)
        ins = inserts[jj].repeat_interleave(B)[:, None, None, None]
        px, rf = pixels.repeat(k, 1, 1, 1), ref.repeat(k, 1, 1, 1)
        # deletion: the image with its top patches from the reference; insertion: the reverse
        base, fill = torch.where(ins, rf, px), torch.where(ins, px, rf)
        out.append(p_fake(model, base * (1 - m) + fill * m).reshape(k, B))
    curves = torch.cat(out).reshape(len(jobs), steps + 1, B)
    return [curves[j].T.contiguous() for j in range(len(jobs))]


def curve_area(curves: np.ndarray) -> np.ndarray:
    """Area under (B, steps + 1) curves over [0, 1] (trapezoid rule)."""
    ys = np.asarray(curves, np.float64)
    return ((ys[:, 1:] + ys[:, :-1]) / 2).mean(axis=1)


def order_by(maps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Patch order, most relevant first, from (B, gh, gw) maps; random where maps is None-like."""
    flat = maps.reshape(maps.shape[0], -1)
    noise = torch.rand(flat.shape, generator=generator, device=flat.device) * 1e-6
    return torch.argsort(flat + noise, dim=1, descending=True)


def bootstrap_ci(values: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
