"""A small finished run directory shared by the explorer tests (planted images, random encoder,
no pattern stage: the views' empty states)."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, random_encoder, dask_scheduler) -> Path:
    from pipeline.config import PatternConfig, RunConfig
    from pipeline.runner import run_pipeline
    from pipeline.synthetic import make_planted_dataset

    root = tmp_path_factory.mktemp("explorer")
    make_planted_dataset(root / "imgs", 60, 60, seed=3)
    out = root / "run"
    run_pipeline(RunConfig(source=str(root / "imgs"), out=str(out),
                           encoder_checkpoint=str(random_encoder), layout="pca",
                           scheduler=dask_scheduler, progress=False,
                           patterns=PatternConfig(enabled=False)))  # fmt: skip
    return out
