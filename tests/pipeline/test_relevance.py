"""Relevance: the explicit attention equals open_clip's; the cheap last-block path equals the
generic Chefer rule; maps are non-negative and finite; no gradient reaches the pixels; and a model
trained on planted artifacts points at them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import relevance as R
from pipeline.config import EncoderConfig
from pipeline.encoder import create_encoder
from pipeline.schema import MAP_NAMES
from tests.conftest import TINY


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_encoder(EncoderConfig(model_name=TINY)).eval().requires_grad_(False)


def test_explicit_attention_equals_open_clip(model):
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        h = model.visual._embeds(x)
        for blk in R._blocks(model):
            ours, probs = R.block_forward(blk, h)
            theirs = blk(h)
            assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
            assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
            h = theirs
        assert torch.allclose(R._pooled(model, h[:, 0]), model.visual(x), atol=1e-5)


def test_last_block_path_equals_generic_chefer_rule(model):
    x = torch.randn(3, 3, 64, 64)
    fast = R.explain_last(model, x)
    with torch.no_grad():
        h = R._run_blocks(model, model.visual._embeds(x), R._blocks(model)[:-1])
    h.requires_grad_(True)
    out, probs = R.block_forward(R._blocks(model)[-1], h)  # full T x T attention
    emb = R._pooled(model, out[:, 0])
    _, _, targets = R._targets(model, emb)
    (g,) = R._grads(targets, [probs])  # (J, B, H, T, T)
    rows = (g * probs).clamp(min=0).mean(2)  # (J, B, T, T)
    assert rows[:, :, 1:].abs().max() == 0, "only the CLS row of the last block gets gradient"
    generic = rows[:, :, 0, 1:].permute(1, 0, 2).reshape(fast.maps.shape)
    assert torch.allclose(fast.maps, generic, atol=1e-7)
    # the fake and real maps are the two signs of the logit's relevance, head by head
    signed = (g[0] * probs).mean(1)[:, 0, 1:].reshape(fast.maps[:, 0].shape)
    assert torch.allclose(fast.maps[:, 0] - fast.maps[:, 1], signed, atol=1e-7)
    assert torch.allclose(fast.emb, model.visual(x), atol=1e-5)


def test_maps_shape_nonnegative_finite_and_no_pixel_gradient(model):
    x = torch.randn(5, 3, 64, 64, requires_grad=True)
    for mode in ("last", "all"):
        ex = R.explain(model, x, mode)
        assert ex.maps.shape == (5, len(MAP_NAMES), 8, 8)
        assert torch.isfinite(ex.maps).all() and (ex.maps >= 0).all()
        assert ex.maps.sum() > 0
        assert x.grad is None, "gradients must stop at the attention tensors"


def test_full_rollout_of_one_block_equals_last_block(tmp_path):
    import open_clip

    cfg = json.loads(open_clip.get_model_config(TINY).__repr__().replace("'", '"'))
    cfg["vision_cfg"]["layers"] = 1
    (tmp_path / "asap-one-block.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(3)
    m = create_encoder(EncoderConfig(model_name="asap-one-block")).eval().requires_grad_(False)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(R.explain_all(m, x).maps, R.explain_last(m, x).maps, atol=1e-6)


@pytest.mark.slow
def test_pointing_game_on_planted_artifacts(planted, tmp_path):
    """Train on fakes carrying a checkerboard at a random place; the fake map's peak must fall
    on (or next to) the artifact in most correctly detected fakes of the held-out split."""
    from pipeline import ingest
    from pipeline.config import TrainConfig
    from pipeline.imageio import load_for_model, normalize
    from pipeline.train import train_encoder

    root, truth = planted
    images = ingest.finalize(ingest.inspect_candidates(ingest.discover(root), 10**8, 8)[0])
    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name=TINY))
    train_encoder(model, images, TrainConfig(epochs=15))
    truth = truth.assign(path_bytes=truth["path"].map(str.encode))
    test = images[images["split"] != "train"].merge(
        truth[["path_bytes", "top", "left", "side"]], on="path_bytes"
    )
    fakes = test[test["label"] == 1]
    arr = np.stack([load_for_model(p, 64) for p in fakes["path_bytes"]])
    ex = R.explain_last(model.eval(), normalize(arr, model.preprocess["mean"],
                                                model.preprocess["std"]))  # fmt: skip
    detected = (torch.sigmoid(ex.logit) > 0.5).numpy()
    assert detected.mean() > 0.8, f"detector too weak to judge its maps: {detected.mean():.2f}"
    hits = []
    for i, (top, left, side) in enumerate(fakes[["top", "left", "side"]].to_numpy()):
        r, c = np.unravel_index(int(ex.maps[i, 0].argmax()), (8, 8))
        # patch (r, c) covers pixels [8r, 8r+8); it must overlap the artifact +- one patch
        hits.append(top - 8 < 8 * r + 8 and 8 * r < top + side + 8 and
                    left - 8 < 8 * c + 8 and 8 * c < left + side + 8)  # fmt: skip
    hits = np.array(hits)[detected]
    chance = ((12 + 8 + 16) / 64) ** 2  # share of patches within reach, roughly
    assert hits.mean() > max(0.7, 2 * chance), f"pointing game {hits.mean():.2f}"
