"""A frozen (pretrained) tower's embedding pass runs on the Dask workers, not in the driver
(pipeline.embed): the embeddings match the driver's own, in order, and a run with a frozen tower
trains on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import EncoderConfig, PatternConfig, RunConfig, TrainConfig
from pipeline.embed import DaskEmbedder
from pipeline.encoder import create_encoder
from pipeline.synthetic import make_planted_dataset
from pipeline.train import BatchSource, _embed_all
from tests.conftest import TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory):
    """A local open_clip checkpoint of the tiny ViT: what --pretrained FILE loads and freezes."""
    import open_clip

    from pipeline.encoder import _register_configs

    _register_configs()
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(open_clip.create_model(TINY).state_dict(), path)
    return path


def test_workers_embed_like_the_driver(tmp_path, frozen_checkpoint, dask_scheduler):
    from distributed import Client

    truth = make_planted_dataset(tmp_path / "imgs", 20, 23, seed=4)
    paths = [str(p).encode() for p in truth["path"]]
    (tmp_path / "gone.png").write_bytes(b"not an image any more")  # changed since ingest
    paths.insert(7, str(tmp_path / "gone.png").encode())
    enc = EncoderConfig(model_name=TINY, pretrained=str(frozen_checkpoint))
    model = create_encoder(enc).eval()
    want, want_ok = _embed_all(model, BatchSource(paths, model.image_size, 10**9), 16, "cpu")
    with Client(dask_scheduler) as client:
        embed = DaskEmbedder(client, enc, tmp_path / "work", chunk=10, batch_size=4,
                             device="cpu", torch_threads=1, precision="fp32")  # fmt: skip
        got, ok = embed(paths)
        assert len(list((tmp_path / "work").glob("embed-*.npz"))) == 5  # 44 images, chunks of 10
        embed.cleanup()
    assert not (tmp_path / "work").exists()
    assert embed.devices == {"cpu"}
    np.testing.assert_array_equal(ok, want_ok)
    assert not ok[7] and ok.sum() == 43
    assert got.shape == want.shape
    torch.testing.assert_close(got[ok], want[ok], rtol=1e-4, atol=1e-5)
    assert torch.all(got[~ok] == 0)


def test_frozen_run_trains_on_worker_embeddings(tmp_path, frozen_checkpoint, dask_scheduler):
    from pipeline.runner import run_pipeline
    from pipeline.schema import read_run_json

    make_planted_dataset(tmp_path / "imgs", 60, 60, seed=5)
    cfg = RunConfig(
        source=str(tmp_path / "imgs"),
        out=str(tmp_path / "run"),
        encoder=EncoderConfig(model_name=TINY, pretrained=str(frozen_checkpoint)),
        train=TrainConfig(epochs=2, patience=2),
        patterns=PatternConfig(enabled=False),
        scheduler=dask_scheduler,
        layout="pca",
        partition_size=32,
        progress=False,
    )
    run_pipeline(cfg)
    train = read_run_json(tmp_path / "run")["stages"]["train"]
    assert train["frozen_backbone"] and train["embedded_on"] == "workers"
    assert not (tmp_path / "run" / "model" / "embed-tmp").exists()
    feats = pd.read_parquet(tmp_path / "run" / "features.parquet")
    assert len(feats) == 120
