"""Self-blended training fakes (pipeline/selfblend.py): a trace changes pixels only in and next
to its mask, every kind can be drawn, faint traces are kept (a few grey levels), the patch
targets follow the token order of tiled towers, and training records and validates the share."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.config import EncoderConfig, TrainConfig
from pipeline.encoder import create_encoder
from pipeline.selfblend import KINDS, _traced, patch_targets, self_blend
from pipeline.synthetic import texture


def test_a_trace_stays_in_its_region_and_is_sometimes_faint():
    rng = np.random.default_rng(0)
    peaks, sides = [], []
    for _ in range(200):
        img = texture(rng, 64)
        out, mask = self_blend(img, rng, 8)
        assert out.shape == img.shape and out.dtype == np.uint8 and mask.shape == (64, 64)
        changed = np.any(out != img, axis=2)
        assert mask.any() == changed.any()
        if not mask.any():
            continue
        # a feathered edge reaches ~3 px past the half-weight contour, never further
        assert not (changed & ~ndimage.binary_dilation(mask, iterations=4)).any()
        peaks.append(int(np.abs(out.astype(int) - img).max()))
        ys, xs = np.nonzero(mask)
        sides += [np.ptp(ys) + 1, np.ptp(xs) + 1]
    assert len(peaks) > 190
    assert min(peaks) <= 4, "faint traces (a few grey levels) are drawn too"
    assert 6 <= min(sides) and max(sides) <= 33, "one to four 8 px patches a side"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_changes_the_image(kind):
    rng = np.random.default_rng(1)
    img = texture(rng, 64).astype(np.float32)
    out = _traced(rng, img, kind)
    assert out.shape == img.shape
    assert np.abs(out - img).mean() > 0.1
    with pytest.raises(ValueError, match="unknown trace kind"):
        _traced(rng, img, "nope")


def test_patch_targets_follow_the_token_order_of_tiles():
    """With 2x2 tiles, tokens run tile by tile (row-major), then patch by patch in the tile, as
    ASAPEncoder.forward_with_tokens returns them."""
    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64", tiles=2))
    masks = torch.zeros(1, 128, 128, dtype=torch.bool)
    masks[0, 64 + 8 : 64 + 16, 24:32] = True  # bottom-left tile (index 2), patch row 1, col 3
    t = patch_targets(masks, model)
    gh = 64 // model.patch_size
    assert t.shape == (1, 4 * gh * gh)
    assert t.sum() == 1 and int(t[0].argmax()) == 2 * gh * gh + 1 * gh + 3
    masks[0] = False
    masks[0, 0:8, 0:1] = True  # 1/8 of a patch: below the quarter that makes it a target
    assert patch_targets(masks, model).sum() == 0


def test_training_with_self_blends_runs_and_says_so(tmp_path, capsys):
    from pipeline import ingest
    from pipeline.cli import main
    from pipeline.synthetic import make_planted_dataset
    from pipeline.train import train_encoder

    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="self-blend share"):
            TrainConfig(selfblend=bad)
    assert main(["run", "nowhere", "--out", "nowhere-run", "--selfblend", "2"]) == 2
    assert "self-blend share" in capsys.readouterr().err

    make_planted_dataset(tmp_path, 24, 24, seed=6)
    images = ingest.finalize(ingest.inspect_candidates(ingest.discover(tmp_path), 10**8, 8)[0])
    runs = {}
    for share in (0.0, 1.0, 1.0):
        torch.manual_seed(0)
        model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64"))
        keys = set(model.state_dict())
        info = train_encoder(model, images, TrainConfig(epochs=1, selfblend=share))
        assert set(model.state_dict()) == keys  # the patch head is a scaffold, not saved
        assert info["selfblend"] == share
        runs.setdefault(share, []).append(info["history"][0]["train_loss"])
    assert runs[1.0][0] == runs[1.0][1], "the same seed draws the same self-blends"
    assert runs[1.0][0] != runs[0.0][0]


def test_a_seam_is_a_thin_line_through_its_region(monkeypatch):
    """The seam class (a splice's or blending boundary's trace): a 1-2 px line, straight or an
    arc, through the region's centre, so the mask that labels it is where it is."""
    from pipeline.selfblend import _seam

    rng = np.random.default_rng(4)
    for _ in range(40):
        centre = tuple(float(v) for v in rng.uniform(10, 54, size=2))
        line = _seam(rng, 64, centre)
        assert line.min() >= 0 and line.max() <= 1
        assert line[int(centre[0]), int(centre[1])] > 0, "it passes through the centre"
        assert not ndimage.binary_erosion(line > 0, iterations=2).any(), "at most ~3 px wide"
        assert (line > 0).sum() >= 10
    monkeypatch.setattr("pipeline.selfblend.KINDS", ("seam",))
    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name="asap-micro-vit-64"))
    for _ in range(20):
        img = texture(rng, 64)
        out, mask = self_blend(img, rng, 8)
        changed = np.any(out != img, axis=2)
        assert changed.any() and mask.any()
        assert changed.sum() < 0.75 * mask.sum() or mask.sum() < 100, "thin, not the region"
        assert (changed & mask).sum() >= 0.5 * changed.sum()
        assert patch_targets(torch.from_numpy(mask)[None], model).sum() >= 1
