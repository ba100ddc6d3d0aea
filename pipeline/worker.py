"""One partition of encode + explain: read images, run the encoder and relevance maps in batches,
write the partition's features and maps atomically. Runs inside a Dask worker (the model is loaded
once per worker process) or in-process (the benchmark's bare loop calls ``encode_rows`` too)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .batchread import BatchReader
from .config import PatternConfig
from .devices import default_batch_size, worker_device
from .encoder import ASAPEncoder, load_encoder
from .explain import explain
from .precision import compute_precision, resolve_precision
from .schema import (
    DISTILLED_COLUMNS,
    PART_FEATURE_COLUMNS,
    REJECT_COLUMNS,
    RunPaths,
    atomic_write,
    write_table,
)

_MODELS: dict[tuple, ASAPEncoder] = {}  # per worker process: (path, sha, device) -> model


def pick_device(preferred: str | None) -> str:
    """The requested device when it names one, else this worker's own GPU (one per worker, from
    its environment; see pipeline.devices), else CPU."""
    return worker_device(preferred)


def cached_model(path: str, sha: str, device: str) -> ASAPEncoder:
    key = (path, sha, device)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_encoder(path, device).requires_grad_(False)
    return _MODELS[key]


def encode_rows(
    model: ASAPEncoder,
    paths: list[bytes],
    *,
    batch_size: int,
    maps: str,
    device: str,
    limits: dict | None = None,
    compare: tuple[str, ...] = (),
    precision: str = "auto",
    on_batch=None,
    decode: str = "pil",
):
    """Encode + explain ``paths`` with method ``maps`` (and the fake maps of the ``compare``
    methods): (index of each kept path, outputs dict, [(index, reason)]). ``on_batch(pixels,
    explanation, first)``, if given, sees each batch on the device (``first``: the batch's first
    row among the kept images), as the pattern stage's patch descriptors do."""
    reader = BatchReader(model.image_size, model.preprocess["mean"], model.preprocess["std"],
                         device, limits=limits, decode=decode)  # fmt: skip
    n = len(paths)
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    kept, fails = [], []
    out = {"distilled": [], "logit": [], "maps": [], "compare": []}
    # The host's part of the next batch (reading; PIL decoding where nvJPEG is not used) runs on
    # a thread while the model computes. Measured on an H100 with ViT-B-32: 8 decoding threads
    # per batch made the loop slower (618 -> 526 img/s; decoding small PNGs holds the GIL most of
    # the time), so a GPU worker runs two partitions at once instead, and decodes JPEGs on the GPU.
    with ThreadPoolExecutor(1) as pool:
        if batches:
            pending = pool.submit(reader.read_host, [paths[i] for i in batches[0]])
        for b, idx in enumerate(batches):
            host = pending.result()
            if b + 1 < len(batches):
                pending = pool.submit(reader.read_host, [paths[i] for i in batches[b + 1]])
            pixels, rows = reader.to_device(host)
            fails += [(idx[i], r) for i, r in host.fails]
            good = [idx[i] for i in rows]
            if not good:
                continue
            with compute_precision(precision, device):
                ex = explain(model, pixels, maps, compare)
                if on_batch is not None:
                    on_batch(pixels, ex, len(kept))
            kept += good
            cmp = [ex.compare[m] for m in compare]
            gh, gw = ex.maps.shape[-2:]
            cmp = torch.stack(cmp, 1) if cmp else ex.maps.new_zeros((len(good), 0, gh, gw))
            # kept on the device until the partition is done: one copy to the host instead of a
            # synchronising copy per batch (the GPU queues the next batch meanwhile)
            out["compare"].append(cmp.detach().half())
            out["distilled"].append(ex.distilled.detach().float())
            out["logit"].append(ex.logit.detach().float())
            out["maps"].append(ex.maps.detach().half())
    if kept:
        out = {k: torch.cat(v).cpu() for k, v in out.items()}
        out["p_fake"] = model.p_fake(out["logit"]).cpu().numpy()
        out = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    return kept, out, fails


def save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a bare name
        np.save(f, arr)


def encode_partition(
    part: int,
    ids: np.ndarray,
    paths: list[bytes],
    run_root: str,
    model_path: str,
    model_sha: str,
    *,
    batch_size: int | None,
    maps: str,
    device: str | None,
    torch_threads: int | None,
    limits: dict,
    compare: tuple[str, ...] = (),
    precision: str = "auto",
    patterns: PatternConfig | None = None,
    n_parts: int = 1,
    decode: str = "pil",
) -> dict:
    """Compute and write one partition; a partition whose features file exists is skipped.
    With ``patterns``, also the partition's patch file (pipeline.patterns: the top patches'
    descriptors from the batches already on the device, and the faithfulness sample), so that
    the pattern stage neither decodes the images again nor runs the tower again (issue 10)."""
    run = RunPaths(Path(run_root))
    if run.part_features(part).exists():
        return {"part": part, "skipped": True, "n": len(ids), "seconds": 0.0}
    t0 = time.perf_counter()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = pick_device(device)
    batch_size = batch_size or default_batch_size(device)
    model = cached_model(model_path, model_sha, device)
    collector, on_batch = None, None
    if patterns is not None:
        from .patterns import PatchCollector

        collector = PatchCollector(patterns)

        def on_batch(pixels, ex, first):
            rows = np.arange(first, first + len(pixels))
            stored = ex.maps.detach().half().float()  # the maps as the run keeps them
            collector.add(model, pixels, stored, rows, ex.last_input)

    kept, out, fails = encode_rows(
        model,
        paths,
        batch_size=batch_size,
        maps=maps,
        device=device,
        limits=limits,
        compare=compare,
        precision=precision,
        on_batch=on_batch,
        decode=decode,
    )
    kept = np.asarray(kept, dtype=np.int64)
    feats = pd.DataFrame({"id": ids[kept]})
    for j, c in enumerate(DISTILLED_COLUMNS):
        feats[c] = out["distilled"][:, j] if len(kept) else np.zeros(0, np.float32)
    feats["logit"] = out["logit"] if len(kept) else np.zeros(0, np.float32)
    feats["p_fake"] = out["p_fake"] if len(kept) else np.zeros(0, np.float32)
    feats["pred"] = (feats["p_fake"] >= 0.5).astype(np.int8)
    feats["part"] = part
    feats["row"] = np.arange(len(kept), dtype=np.int32)
    rel = out["maps"].astype(np.float16) if len(kept) else np.zeros((0,), np.float16)
    cmp = out["compare"].astype(np.float16) if len(kept) else np.zeros((0,), np.float16)
    # Order matters for resume: maps and rejects first, the features file last (it marks "done").
    atomic_write(run.part_relevance(part), lambda tmp: save_npy(tmp, rel))
    atomic_write(run.part_compare(part), lambda tmp: save_npy(tmp, cmp))
    if fails:
        from .ingest import display_path

        rej = pd.DataFrame(
            [(display_path(paths[i]), paths[i], "encode", r) for i, r in fails],
            columns=list(REJECT_COLUMNS),
        )
        write_table(run.part_rejects(part), rej, REJECT_COLUMNS)
    if collector is not None:
        from .patterns import partition_faithfulness, write_patches

        kept_paths = [paths[i] for i in kept]  # float32, as the pattern stage's own pass
        faith = partition_faithfulness(model, kept_paths, feats, rel, cmp, patterns,
                                       [maps, *compare], part, n_parts, device)  # fmt: skip
        write_patches(run, part, collector.arrays(feats["id"].to_numpy()), faith, patterns)
    write_table(run.part_features(part), feats, PART_FEATURE_COLUMNS)
    return {
        "part": part,
        "skipped": False,
        "n": len(kept),
        "seconds": time.perf_counter() - t0,
        "device": device,
        "precision": resolve_precision(precision, device),
    }
