"""The frozen tower's embedding pass on the Dask workers (issue 10): with a pretrained, frozen CLIP
tower only the heads train, on embeddings computed once. Computing them in the driver left every
GPU of the cluster idle and put the whole decode on one process; here each chunk of images is a
Dask task on a worker (its own GPU, the run's precision), written to a file, and the driver reads
the files back in order.

A worker builds the tower from the run's EncoderConfig (the same open_clip weights: a local
checkpoint path must exist on every machine, a tag must be in every machine's cache) and keeps it
for the next chunk."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .batchread import BatchReader
from .config import EncoderConfig
from .devices import default_batch_size, worker_device
from .precision import compute_precision

_TOWERS: dict[tuple[str, str], object] = {}  # per worker process: (config json, device) -> model


def _tower(enc: dict, device: str):
    from .encoder import create_encoder

    key = (json.dumps(enc, sort_keys=True), device)
    if key not in _TOWERS:
        _TOWERS.clear()
        _TOWERS[key] = create_encoder(EncoderConfig(**enc)).to(device).eval()
    return _TOWERS[key]


def embed_chunk(enc: dict, paths: list[bytes], out_file: str, batch_size: int | None,
                device: str | None, torch_threads: int | None, precision: str,
                decode: str = "pil") -> dict:  # fmt: skip
    """Embeddings (n, E) float32 and the decode mask (n,) of ``paths``, written to ``out_file``."""
    t0 = time.perf_counter()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = worker_device(device)
    batch_size = batch_size or default_batch_size(device)
    model = _tower(enc, device)
    reader = BatchReader(model.image_size, model.preprocess["mean"], model.preprocess["std"],
                         device, decode=decode)  # fmt: skip
    done, ok = [], np.zeros(len(paths), bool)  # (indices, embeddings) per batch
    for s in range(0, len(paths), batch_size):
        # ingest checked every file; one that changed since is skipped (not in ``ok``)
        pixels, rows, _ = reader.read(paths[s : s + batch_size])
        if pixels is None:
            continue
        idx = [s + r for r in rows]
        with torch.no_grad(), compute_precision(precision, device):
            e = model.embed(pixels).float().cpu()
        ok[idx] = True
        done.append((idx, e.numpy()))
    dim = done[0][1].shape[1] if done else 0
    emb = np.zeros((len(paths), dim), np.float32)
    for idx, e in done:
        emb[idx] = e
    with open(out_file, "wb") as f:
        np.savez(f, emb=emb, ok=ok)
    return {"n": len(paths), "seconds": time.perf_counter() - t0, "device": device}


class DaskEmbedder:
    """``embed(paths) -> (Tensor (n, E), ok mask (n,))`` computed by the cluster's workers in
    chunks of ``chunk`` images; what ``pipeline.train.train_encoder`` takes as ``embedder``."""

    def __init__(self, client, enc: EncoderConfig, work_dir: Path, *, chunk: int, batch_size: int,
                 device: str | None, torch_threads: int | None, precision: str,
                 progress: bool = False, decode: str = "pil",
                 resources: dict | None = None):  # fmt: skip
        from dataclasses import asdict

        self.client, self.enc = client, asdict(enc)
        self.work_dir, self.chunk, self.batch_size = Path(work_dir), chunk, batch_size
        self.device, self.threads, self.precision = device, torch_threads, precision
        self.progress, self.calls, self.devices = progress, 0, set()
        self.decode, self.resources = decode, resources

    def __call__(self, paths: list[bytes]) -> tuple[torch.Tensor, np.ndarray]:
        from .watch import progress

        self.calls += 1
        self.work_dir.mkdir(parents=True, exist_ok=True)
        files, futs = [], []
        for k, s in enumerate(range(0, len(paths), self.chunk)):
            out = self.work_dir / f"embed-{self.calls}-{k:05d}.npz"
            files.append(out)
            futs.append(self.client.submit(
                embed_chunk, self.enc, list(paths[s : s + self.chunk]), str(out),
                self.batch_size, self.device, self.threads, self.precision, self.decode,
                pure=False,
                key=f"asap-embed-{self.calls}-{k}", resources=self.resources,
            ))  # fmt: skip
        for fut in progress(futs, self.client, "embed", self.progress, "chunk"):
            self.devices.add(fut.result()["device"])
        embs, oks = [], []
        for f in files:
            with np.load(f) as z:
                embs.append(z["emb"])
                oks.append(z["ok"])
        dims = {e.shape[1] for e in embs if e.size}
        dim = dims.pop() if dims else 0
        embs = [e if e.size else np.zeros((len(o), dim), np.float32) for e, o in zip(embs, oks)]
        emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
        return torch.from_numpy(emb), np.concatenate(oks) if oks else np.zeros(0, bool)

    def cleanup(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
