"""Maps in reduced precision stay equivalent to fp32 maps (pipeline.precision), on the committed
golden model and images it never saw. bf16 autocast runs on the CPU too, so this is tested here;
TF32 only changes matrix products on a GPU (benchmarks/scale.py measures it there).

Measured on one CPU (AMD EPYC, 64 planted fakes): Spearman rho of the fake map 0.999 on average
(min 0.996), same top patch in 100% of images; dimension maps rho 0.997, same top patch 97%;
logits within 0.06. The bounds below leave a wide margin for other CPUs' bf16 kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from pipeline.encoder import load_encoder
from pipeline.explain import explain
from pipeline.imageio import load_for_model, normalize
from pipeline.precision import compute_precision, resolve_precision
from pipeline.synthetic import make_planted_dataset
from tests.conftest import GOLDEN


def test_resolve_precision():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda:1") == "tf32"
    assert resolve_precision("tf32", "cpu") == "fp32"  # TF32 is a tensor-core format
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="choose one of auto, fp32, tf32, bf16"):
        resolve_precision("fp8", "cpu")


def test_bf16_maps_rank_like_fp32_maps(tmp_path):
    truth = make_planted_dataset(tmp_path, 0, 64, seed=7)
    model = load_encoder(GOLDEN).requires_grad_(False)
    mean, std = model.preprocess["mean"], model.preprocess["std"]
    x = normalize(np.stack([load_for_model(p, model.image_size) for p in truth.path]), mean, std)
    out = {}
    for precision in ("fp32", "bf16"):
        with compute_precision(precision, "cpu") as used:
            assert used == precision
            out[precision] = explain(model, x, "chefer_all")
    assert torch.get_float32_matmul_precision() == "highest"  # nothing leaks out of the context
    a = out["fp32"].maps.float().flatten(2).numpy()
    b = out["bf16"].maps.float().flatten(2).numpy()
    assert not np.array_equal(a, b)  # bf16 really ran: the maps differ in their low bits
    rho = np.array(
        [[spearmanr(a[i, k], b[i, k])[0] for k in range(a.shape[1])] for i in range(len(a))]
    )
    same_top = a.argmax(-1) == b.argmax(-1)
    assert rho[:, 0].mean() >= 0.98 and rho[:, 0].min() >= 0.9  # the fake map
    assert same_top[:, 0].mean() >= 0.9
    assert np.nanmean(rho[:, 2:]) >= 0.95  # the 16 dimension maps
    assert same_top[:, 2:].mean() >= 0.85
    logit = out["fp32"].logit - out["bf16"].logit.float()
    assert logit.abs().max() <= 0.5


def test_tf32_setting_is_restored_when_the_last_of_overlapping_contexts_closes():
    """Two partitions in flight on one GPU worker overlap their contexts: TF32 stays on until the
    last one closes, then the process's setting comes back (nothing here needs a GPU: only the
    process-wide switches are exercised)."""
    assert torch.get_float32_matmul_precision() == "highest"
    first, second = compute_precision("auto", "cuda:0"), compute_precision("tf32", "cuda:0")
    assert first.__enter__() == "tf32"
    second.__enter__()
    first.__exit__(None, None, None)
    assert torch.get_float32_matmul_precision() == "high"  # the other one still computes
    second.__exit__(None, None, None)
    assert torch.get_float32_matmul_precision() == "highest"
    with compute_precision("fp32", "cuda"):
        assert torch.get_float32_matmul_precision() == "highest"


def test_patch_spectra_stay_float32_under_bf16(tmp_path):
    """The encode pass describes the top patches inside the run's precision context; the
    residual spectra must not be computed in bfloat16, whose resolution (about 0.008 at the
    normalised pixels' scale) is coarser than a trace of a few grey levels (about 0.09): given
    the same maps, the spectrum descriptors under bf16 autocast equal the fp32 ones."""
    from pipeline.config import PatternConfig
    from pipeline.patterns import describe

    truth = make_planted_dataset(tmp_path, 0, 16, seed=3)
    model = load_encoder(GOLDEN).requires_grad_(False)
    mean, std = model.preprocess["mean"], model.preprocess["std"]
    x = normalize(np.stack([load_for_model(p, model.image_size) for p in truth.path]), mean, std)
    maps = explain(model, x, "chefer_all").maps.detach()
    cfg = PatternConfig(feature="spectrum")
    ref = describe(model, x, maps, cfg)["feature"].float()
    with compute_precision("bf16", "cpu"):
        low = describe(model, x, maps, cfg)["feature"].float()
    # the same float32 arithmetic: equal (in bf16 the blur's products moved the spectra by up
    # to 0.004, and the DC term of some by 180%)
    assert torch.equal(low, ref)
