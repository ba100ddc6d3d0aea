"""The masking reference of pipeline.perturb: a blur plus the image's own fine residual, shuffled.
Properties that hold exactly, on any machine (no trained model)."""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF

from pipeline.config import EncoderConfig
from pipeline.encoder import create_encoder
from pipeline.perturb import blurred, masked


def _model():
    torch.manual_seed(0)
    return create_encoder(EncoderConfig(model_name="asap-micro-vit-64")).eval()


def test_reference_keeps_the_noise_level_and_loses_local_structure():
    model = _model()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, generator=gen) * 0.1
    x[:, :, 20:32, 20:32] += torch.where(
        (torch.arange(12)[:, None] // 2 + torch.arange(12)[None] // 2) % 2 == 0, 1.0, -1.0
    )  # a strong local checkerboard
    ref = blurred(model, x)
    torch.testing.assert_close(ref, blurred(model, x), rtol=0, atol=0)  # deterministic
    fine = x - TF.gaussian_blur(x, [5, 5], [1.0, 1.0])
    added = ref - _coarse(model, x)  # the shuffled residual the reference adds
    # the same residual values, moved: its energy (the image's noise level) is kept exactly
    for b in range(2):
        for c in range(3):
            assert torch.allclose(added[b, c].flatten().sort().values,
                                  fine[b, c].flatten().sort().values, atol=1e-5)  # fmt: skip
    # ... while the checkerboard's structure is gone from its place: its energy there is the
    # image's average, not the trace's
    inside = (added[:, :, 20:32, 20:32] ** 2).mean()
    assert inside < 0.5 * (fine[:, :, 20:32, 20:32] ** 2).mean()


def _coarse(model, x):
    size, gh = x.shape[-1], model.visual.grid_size[0]
    sigma = max(size / gh / 2, 1.0)
    k = int(2 * round(3 * sigma) + 1)
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def test_masking_changes_only_the_masked_patches():
    model = _model()
    x = torch.rand(1, 3, 64, 64)
    grid = torch.zeros(1, 8, 8, dtype=torch.bool)
    grid[0, 2, 3] = True
    out = masked(x, blurred(model, x), grid)
    changed = (out != x).any(dim=1)[0]
    assert changed[16:24, 24:32].any() and not changed[:16].any() and not changed[24:].any()
    assert not changed[16:24, :24].any() and not changed[16:24, 32:].any()


def test_blur_as_matrix_products_equals_torchvisions():
    """pipeline.perturb.gaussian_blur (two matrix products) is torchvision's gaussian_blur: the
    same kernel and reflected border, square or not, up to float rounding; a kernel wider than
    the image is refused with a message, as torch's reflect padding would refuse it."""
    import pytest

    from pipeline.perturb import gaussian_blur

    gen = torch.Generator().manual_seed(2)
    for size, sigma, shape in ((25, 4.0, (2, 3, 64, 64)), (5, 1.0, (1, 3, 64, 64)),
                               (9, 1.5, (2, 1, 48, 80)), (25, 4.0, (1, 3, 224, 224)),
                               (3, 0.5, (1, 3, 2, 2))):  # fmt: skip
        x = torch.randn(*shape, generator=gen)
        want = TF.gaussian_blur(x, [size, size], [sigma, sigma])
        torch.testing.assert_close(gaussian_blur(x, size, sigma), want, rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="larger than 12 px"):
        gaussian_blur(torch.zeros(1, 3, 12, 12), 25, 4.0)


def test_curves_of_several_orders_equal_each_curve_built_by_hand(monkeypatch):
    """The faithfulness curves of several orders (deletion and insertion) in shared passes equal
    each step built by hand: the image with the order's first patches from the reference
    (deletion) or the reference with them from the image (insertion), for any pass size."""
    import pipeline.perturb as P

    model = _model().requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 64, 64, generator=gen)
    n, steps = 64, 4
    orders = [torch.stack([torch.randperm(n, generator=gen) for _ in range(3)]) for _ in range(2)]
    jobs = [(orders[0], False), (orders[0], True), (orders[1], False), (orders[1], True)]
    ref = blurred(model, x)
    for per_pass in (7, 256):  # several passes, and one for everything
        monkeypatch.setattr(P, "CURVE_BATCH", per_pass)
        curves = P.curves_of(model, x, jobs, steps)
        assert [tuple(c.shape) for c in curves] == [(3, steps + 1)] * 4
        for (order, insertion), got in zip(jobs, curves):
            for s in range(steps + 1):
                grid = torch.zeros(3, n, dtype=torch.bool)
                for b in range(3):
                    grid[b, order[b, : round(n * s / steps)]] = True
                grid = grid.reshape(3, 8, 8)
                img = masked(ref, x, grid) if insertion else masked(x, ref, grid)
                torch.testing.assert_close(got[:, s], P.p_fake(model, img), atol=1e-5, rtol=0)
        # one order alone gives the same curves
        alone = P.perturbation_curves(model, x, orders[0], steps, True)
        torch.testing.assert_close(alone, curves[1], atol=1e-6, rtol=0)
