"""Encoder: shapes, orthogonal projection, save/load round trip, pretrained loading paths."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from pipeline.config import EncoderConfig
from pipeline.encoder import (
    ENERGY_CLAMP,
    HUB_PROBE_ENV,
    STEM_CHANNELS,
    PretrainedUnavailable,
    create_encoder,
    load_encoder,
    local_energy,
    patch_energy,
    save_encoder,
)
from tests.conftest import GOLDEN, TINY


def test_forward_shapes_and_orthogonal_projection():
    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name=TINY)).eval()
    emb, distilled, logit = model(torch.randn(3, 3, 64, 64))
    assert emb.shape == (3, 512) and distilled.shape == (3, 16) and logit.shape == (3,)
    w = model.text_projection.weight
    assert w.shape == (256, 512)
    assert torch.allclose(w @ w.T, torch.eye(256), atol=1e-5)
    assert all(p.requires_grad for p in model.visual.parameters()), "scratch tower must train"


@pytest.mark.parametrize("stem", ["forensic", "patch", "bank", "lines", "highpass", "none"])
def test_save_load_round_trip(tmp_path, stem):
    torch.manual_seed(1)
    model = create_encoder(EncoderConfig(model_name=TINY, stem=stem)).eval()
    assert model.visual.conv1.in_channels == STEM_CHANNELS[stem] == model.stem(
        torch.zeros(1, 3, 64, 64)).shape[1]  # fmt: skip
    model.temperature.fill_(2.5)
    x = torch.randn(2, 3, 64, 64)
    save_encoder(model, tmp_path / "enc.pt")
    loaded = load_encoder(tmp_path / "enc.pt")
    for a, b in zip(model(x), loaded(x)):
        assert torch.equal(a, b)
    assert float(loaded.temperature) == 2.5
    model.logit_shift.fill_(-0.75)
    save_encoder(model, tmp_path / "shifted.pt")
    loaded = load_encoder(tmp_path / "shifted.pt")
    logit = torch.tensor([-2.0, 0.0, 1.875])
    assert torch.equal(loaded.p_fake(logit), torch.sigmoid(logit / 2.5 - 0.75))


def test_checkpoint_from_before_the_logit_shift_loads_with_p_fake_unchanged(tmp_path):
    """Checkpoints saved before Platt's shift (the committed demo encoder, the golden fixture)
    have no ``logit_shift``: they load, and p(fake) is sigmoid(logit / T) as before."""
    blob = torch.load(GOLDEN, map_location="cpu", weights_only=False)
    assert "logit_shift" not in blob["state_dict"]
    model = load_encoder(GOLDEN)
    logit = torch.linspace(-6, 6, 13)
    assert float(model.logit_shift) == 0.0
    assert torch.equal(model.p_fake(logit), torch.sigmoid(logit / model.temperature))


def test_default_stems_and_the_energy_stems_refused_on_a_pretrained_tower():
    assert EncoderConfig().stem == "bank"
    assert EncoderConfig(pretrained="openai").stem == "none"
    for stem in ("forensic", "patch", "bank", "lines"):
        with pytest.raises(ValueError, match="more than 3 channels.*use stem 'highpass'"):
            EncoderConfig(pretrained="openai", stem=stem)


def test_grey_ridges_find_a_pixel_sharp_grey_line_in_its_own_patches():
    """The "lines" stem's channels (horizontal bright, horizontal dark, vertical bright, vertical
    dark): a +8 grey-level horizontal line one pixel wide on noise of 2 grey levels peaks in
    the horizontal-bright channel in exactly the patches it crosses; the same line in one colour
    channel only is not a grey ridge; a per-channel offset changes nothing; transposing the image
    swaps the horizontal and vertical channels."""
    from pipeline.encoder import grey_ridges

    g = torch.Generator().manual_seed(3)
    base = 0.5 + torch.randn(1, 3, 64, 64, generator=g) * (2 / 255)
    grey = base.clone()
    grey[0, :, 21, 9:31] += 8 / 255  # crosses patches (2, 1), (2, 2), (2, 3)
    r = grey_ridges(grey, 8)
    assert r.shape == (1, 4, 64, 64)
    per_patch = r[0, 0, ::8, ::8]
    top3 = {divmod(int(i), 8) for i in per_patch.flatten().topk(3).indices}
    assert top3 == {(2, 1), (2, 2), (2, 3)}, per_patch
    clean = grey_ridges(base, 8)[0, 0, ::8, ::8]
    assert float(per_patch[2, 1:4].min()) > 2 * float(clean.max())
    assert float(per_patch[2, 1:4].min()) > 2 * float(r[0, 2, 16:24:8, 8:32:8].max())
    red = base.clone()
    red[0, 0, 21, 9:31] += 8 / 255
    assert float(grey_ridges(red, 8)[0, 0, 16, 8:32:8].max()) < float(per_patch[2, 1:4].min()) / 2
    offset = torch.tensor([0.1, -0.2, 0.05]).view(1, 3, 1, 1)
    torch.testing.assert_close(grey_ridges(grey + offset, 8), r, rtol=1e-4, atol=1e-4)
    flipped = grey_ridges(grey.transpose(2, 3), 8)
    torch.testing.assert_close(flipped[:, [2, 3, 0, 1]].transpose(2, 3), r, rtol=1e-4, atol=1e-4)


def test_bank_stem_is_local_and_its_filters_train():
    """The "bank" stem's energy channels change only in the patches a trace touches, and its
    filters receive the detector's gradient (they train with the tower and are saved with it)."""
    torch.manual_seed(2)
    model = create_encoder(EncoderConfig(model_name=TINY, stem="bank"))
    g = torch.Generator().manual_seed(3)
    ramp = torch.linspace(0.2, 0.8, 64)
    clean = (ramp[None, :] + ramp[:, None]) / 2 + 0.004 * torch.randn(1, 3, 64, 64, generator=g)
    traced = clean.clone()
    yy, xx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    traced[0, :, 24:32, 40:48] += 0.03 * torch.cos(2.1 * xx)  # one patch: row 3, column 5
    with torch.no_grad():
        diff = (model.stem(traced) - model.stem(clean))[0, 6:].abs().amax(dim=0)
    per_patch = diff.reshape(8, 8, 8, 8).amax(dim=(1, 3))  # (patch row, patch column)
    assert divmod(int(per_patch.argmax()), 8) == (3, 5) and per_patch[3, 5] > 0.5
    # the blur and the 5x5 filters reach 4 px past the patch (its neighbours), whose energies
    # enter the 5x5-patch medians of the patches 2 further: nothing beyond changes
    outside = per_patch.clone()
    outside[0:7, 2:8] = 0
    assert float(outside.max()) == 0.0 and float(per_patch[7].max()) == 0.0
    _, _, logit = model(traced)
    logit.sum().backward()
    assert model.bank.weight.grad is not None and float(model.bank.weight.grad.abs().sum()) > 0


def test_bank_starts_with_ridge_filters_that_see_a_faint_seam():
    """The bank's first BANK_LINES filters start as oriented ridge detectors: a +8 grey-level
    1 px horizontal seam on a noisy texture raises the horizontal one's patch energy several
    times more than the residual's own, and leaves the vertical one's flat. No training."""
    from pipeline.encoder import BANK_LINES, ridge_filters
    from pipeline.synthetic import texture

    w = ridge_filters()
    assert BANK_LINES == 4 and w.shape == (4, 3, 5, 5)
    assert torch.allclose(w.flatten(1).norm(dim=1), torch.ones(4))
    assert torch.allclose(w[1], w[0].transpose(-1, -2)) and torch.allclose(w[3], w[2].flip(-1))
    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name=TINY, stem="bank"))
    assert torch.equal(model.bank.weight[:4], w)
    rng = np.random.default_rng(5)

    def pixels(arr):
        x = torch.tensor(np.clip(np.rint(arr), 0, 255)).permute(2, 0, 1)[None] / 255.0
        return (x - 0.45) / 0.27

    for _ in range(3):
        clean = texture(rng, 64).astype(np.float32)
        seam = clean.copy()
        seam[27, 20:40] += 8.0  # patch row 3, columns 2-4
        with torch.no_grad():
            rise = (model.stem(pixels(seam)) - model.stem(pixels(clean)))[0, :, ::8, ::8]
        residual, horizontal, vertical = rise[3:6].amax(0), rise[6], rise[7]
        assert float(horizontal[3, 3:5].min()) > 3 * float(residual[3, 3:5].max()) > 0
        assert float(horizontal[3, 3:5].min()) > 0.8
        assert float(vertical[3, 2:5].abs().max()) < 0.2


def test_bank_starts_with_chroma_filters_that_see_colour_speckle_not_grey_detail():
    """The next BANK_CHROMA filters start as opponent-colour detectors: blind to any grey change
    (a +8 seam moves their channels by float rounding only), while sparse +-20 colour speckle on
    a photograph raises their patch energy in the speckled patches, by more in all than the
    residual's own energy rises (measured on these 8 crops: 22.6 against 14.7 log units)."""
    from pipeline.encoder import BANK_CHROMA, BANK_LINES, chroma_filters
    from pipeline.synthetic import PhotoCrops

    w = chroma_filters()
    assert BANK_CHROMA == 2 and w.shape == (2, 3, 5, 5)
    assert torch.allclose(w.flatten(1).norm(dim=1), torch.ones(2))
    assert torch.allclose(w.sum(dim=1), torch.zeros(2, 5, 5))  # zero on grey
    torch.manual_seed(0)
    model = create_encoder(EncoderConfig(model_name=TINY, stem="bank"))
    chroma = slice(BANK_LINES, BANK_LINES + BANK_CHROMA)
    assert torch.equal(model.bank.weight[chroma], w)
    photo, rng = PhotoCrops(), np.random.default_rng(3)

    def pixels(arr):
        x = torch.tensor(np.clip(np.rint(arr), 0, 255)).permute(2, 0, 1)[None] / 255.0
        return (x - 0.45) / 0.27

    rises = []
    for _ in range(8):
        clean = photo(rng, 64).astype(np.float32)
        speckled, grey = clean.copy(), clean.copy()
        hit = rng.random((10, 10)) < 0.25  # patches (3..4, 3..4) of the 8 px grid
        speckled[24:34, 24:34] += rng.choice([-20.0, 20.0], size=(10, 10, 3)) * hit[..., None]
        grey[27, 20:40] += 8.0
        with torch.no_grad():
            before = model.stem(pixels(clean))
            rise = (model.stem(pixels(speckled)) - before)[0, :, ::8, ::8]
            moved = (model.stem(pixels(grey)) - before)[0, :, ::8, ::8]
        c = 6 + BANK_LINES  # the stem: residual (3), its energy (3), the bank's energies
        assert float(moved[c : c + BANK_CHROMA].abs().max()) < 1e-4
        region = rise[:, 3:5, 3:5]
        rises.append((float(region[3:6].amax()), float(region[c : c + BANK_CHROMA].amax())))
        assert rises[-1][1] > 1.0
    residual, colour = np.sum(rises, axis=0)
    assert colour > 1.3 * residual


def test_local_energy_is_relative_to_the_image_and_marks_a_noisier_region():
    g = torch.Generator().manual_seed(0)
    residual = torch.randn(2, 3, 64, 64, generator=g)
    residual[1, :, 20:30, 40:50] *= 4  # a speckled region: 16x the energy
    e = local_energy(residual)
    assert e.shape == residual.shape and e.abs().max() <= ENERGY_CLAMP
    # clean noise: log-ratio about 0 everywhere (measured: median |e| 0.27); the speckled region
    # stands out against its surround (measured: mean 0.94; its own energy raises the surround's)
    assert e[0].abs().median() < 0.4 and e[1, :, 22:28, 42:48].mean() > 0.7
    assert e[1, :, :, :30].abs().median() < 0.4  # far from the region, unchanged
    # a ratio to the surround: the same for a 10x louder image (the eps aside)
    assert torch.allclose(local_energy(10 * residual), e, atol=0.02)


def test_patch_energy_is_per_patch_relative_and_stays_in_the_trace_s_patches():
    g = torch.Generator().manual_seed(0)
    residual = torch.randn(1, 3, 64, 64, generator=g).repeat(2, 1, 1, 1)
    residual[1, :, 16:32, 40:48] *= 4  # two patches (8 px grid), 16x the energy
    e = patch_energy(residual, 8)
    assert e.shape == residual.shape and e.abs().max() <= ENERGY_CLAMP
    grid = e.reshape(2, 3, 8, 8, 8, 8)  # (B, C, row, y in patch, column, x in patch)
    assert torch.equal(grid, grid[:, :, :, :1, :, :1].expand_as(grid)), "constant per patch"
    per_patch = grid[:, :, :, 0, :, 0].mean(1)  # (B, 8, 8)
    # the two noisy patches read log(16) ~ 2.8 above their neighbourhood; every other patch of
    # the image is as it was without them (the median ignores them): the evidence stays local
    assert per_patch[1, 2:4, 5].min() > 2.0
    others = torch.ones(8, 8, dtype=torch.bool)
    others[2:4, 5] = False
    assert (per_patch[1] - per_patch[0])[others].abs().max() < 0.1  # measured: 0.04
    assert per_patch[0].abs().median() < 0.3  # clean noise: about 0
    assert torch.allclose(patch_energy(10 * residual, 8), e, atol=0.02)  # a ratio


def test_local_checkpoint_is_loaded_and_frozen(tmp_path):
    import open_clip

    from pipeline.encoder import _register_configs

    _register_configs()
    torch.manual_seed(2)
    clip = open_clip.create_model(TINY)
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(clip.state_dict(), ckpt)
    model = create_encoder(EncoderConfig(model_name=TINY, pretrained=str(ckpt)))
    assert not any(p.requires_grad for p in model.visual.parameters())
    ref = clip.visual.conv1.weight
    assert torch.equal(model.visual.conv1.weight, ref)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_encoder(EncoderConfig(model_name=TINY, pretrained=str(tmp_path / "missing.pt")))


def test_uncached_pretrained_tag_fails_fast_offline(tmp_path, monkeypatch):
    """Offline, an uncached tag fails at once with advice: one probe, no download attempt (open_clip
    and huggingface_hub would otherwise retry for most of a minute)."""
    import huggingface_hub
    import open_clip.pretrained

    def no_download(*args, **kwargs):
        pytest.fail("a download was attempted although the hub probe failed")

    for mod, name in [
        (open_clip.pretrained, "download_pretrained"),
        (open_clip.pretrained, "download_pretrained_from_hf"),
        (open_clip.pretrained, "download_pretrained_from_url"),
        (open_clip.pretrained, "hf_hub_download"),
        (huggingface_hub, "hf_hub_download"),
        (huggingface_hub, "snapshot_download"),
        (huggingface_hub.file_download, "hf_hub_download"),
    ]:
        monkeypatch.setattr(mod, name, no_download)
    probes = []

    def unreachable(address, *args, **kwargs):  # the hub probe, without touching the network
        probes.append(address)
        raise ConnectionRefusedError(f"{address} unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setenv(HUB_PROBE_ENV, "hub.invalid:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # empty caches
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = EncoderConfig(model_name="ViT-B-32", pretrained="openai")
    with pytest.raises(PretrainedUnavailable, match="--pretrained /path/to"):
        create_encoder(cfg, cache_dir=str(tmp_path / "cache" / "clip"))
    assert probes.count(("hub.invalid", 9)) == 1, f"expected one hub probe, got {probes}"


def test_bad_names_give_clear_errors():
    with pytest.raises(ValueError, match="unknown model"):
        create_encoder(EncoderConfig(model_name="ViT-Nope"))
    with pytest.raises(ValueError, match="VisionTransformer"):
        create_encoder(EncoderConfig(model_name="RN50"))
    with pytest.raises(ValueError, match="not a pretrained tag"):
        create_encoder(EncoderConfig(model_name="ViT-B-32", pretrained="no-such-tag"))
