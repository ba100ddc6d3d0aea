"""Orchestration: run the stages ingest -> train -> encode+explain -> layout on a Dask cluster
(a LocalCluster by default, or an existing scheduler) into a run directory, resuming whatever a
previous, interrupted run left done."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import dask
import numpy as np
import pandas as pd

from . import ingest as ingest_mod
from .config import RunConfig
from .devices import gpu_worker_env
from .layout import compute_layout
from .schema import (
    FEATURE_COLUMNS,
    IMAGE_COLUMNS,
    PART_FEATURE_COLUMNS,
    REJECT_COLUMNS,
    SCHEMA_VERSION,
    RunDirectoryError,
    RunPaths,
    empty_table,
    read_table,
    write_json,
    write_table,
)
from .watch import as_completed_watched, gather_watched

log = logging.getLogger(__name__)
# Settings for the workers of ASAP's LocalCluster, both measured by benchmarks/pipeline.py:
# - Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which turns off glibc's dynamic mmap threshold: every
#   large activation tensor is then mmapped and page-faulted afresh (forward pass 40% slower).
# - the statistical profiler samples every thread's stack each 10 ms under the GIL (11% slower for
#   the tiny model); the dashboard's other pages still work.
WORKER_SETTINGS = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}
INGEST_CHUNK = 256  # files per ingest task
# ingest tasks per submission: one graph of every file's candidate at 100,000 files was 9.6 MiB,
# and Dask warned that a large graph slows the scheduler
INGEST_WAVE = 64
# Config fields a resumed run must share with the run it resumes (others may change).
IDENTITY_FIELDS = (
    "source",
    "encoder",
    "train",
    "encoder_checkpoint",
    "columns",
    "partition_size",
    "maps",
    "compare_maps",
    "decode",  # maps of a pixel-residual detector move with the decoder (README, 'At scale')
)


def _say(cfg: RunConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[asap] {msg}", file=sys.stderr, flush=True)


GPU_RESOURCE = "GPU"  # what ASAP's GPU workers declare; the tasks that run a model ask for it


def default_cpu_workers(n_gpu_workers: int, cores: int | None = None) -> int:
    """CPU-only workers beside the GPU workers on one machine: the cores left after 4 per GPU
    worker (its two partitions in flight and their host threads). On one H200 with 16 cores a
    single GPU worker's 2 threads did the whole ingest (issue 10); these take it, with the layout's
    chunks and the pattern stage's clustering, while the GPU workers run the models."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(0, cores - 4 * n_gpu_workers)


CPU_WORKERS_MAX = 4  # worker processes of a CPU-only LocalCluster; each holds a model copy


def default_cpu_only_workers(cores: int | None = None) -> int:
    """Workers of a LocalCluster on a machine without a GPU: one per core, at most
    ``CPU_WORKERS_MAX``, torch's threads splitting the cores among them. One worker with one
    task at a time left a core idle while ingest decoded and hashed (issue 10: ingest on one
    core) and while the encode task decoded its next batch. On 10,000 of the scale benchmark's
    256 px JPEGs (2-core AMD EPYC VM, trained tiny model, no pattern stage), 1 -> 2 workers:
    ingest 6.2 -> 3.6 s, encode 45.6 -> 42.5 s; one process computes the maps at 138 img/s with
    one thread and 248 img/s with two."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(cores, CPU_WORKERS_MAX))


def gpu_cluster(n_workers: int, device_count: int, threads: int = 2, env=None,
                cpu_workers: int = 0):  # fmt: skip
    """A local cluster of ``n_workers`` GPU workers, worker i on GPU i (its environment's
    CUDA_VISIBLE_DEVICES lists that GPU first; see pipeline.devices), each declaring the resource
    ``GPU``, and ``cpu_workers`` one-thread workers that see no GPU."""
    from distributed import Nanny, Scheduler, SpecCluster

    envs = gpu_worker_env(n_workers, os.environ if env is None else env, device_count)
    workers = {
        f"gpu-{i}": {
            "cls": Nanny,
            "options": {
                "nthreads": threads,
                "env": e,
                "silence_logs": logging.ERROR,
                "resources": {GPU_RESOURCE: 1},
            },  # fmt: skip
        }
        for i, e in enumerate(envs)
    }
    for j in range(cpu_workers):
        workers[f"cpu-{j}"] = {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "env": {"CUDA_VISIBLE_DEVICES": ""},
                "silence_logs": logging.ERROR,
            },  # fmt: skip
        }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)


@contextmanager
def dask_client(cfg: RunConfig):
    """A client of the given scheduler, or of a new LocalCluster (one worker per GPU, else one
    per core up to CPU_WORKERS_MAX)."""
    from distributed import Client, LocalCluster

    if cfg.scheduler:
        try:
            client = Client(cfg.scheduler, timeout="10s")
        except OSError as e:
            raise ConnectionError(
                f"cannot reach the Dask scheduler at {cfg.scheduler}: {e}. Start one with "
                "`dask scheduler` (and `dask worker ADDRESS` on each machine) or omit --scheduler."
            ) from e
        try:
            yield client
        finally:
            client.close()
        return
    import torch

    gpu = torch.cuda.is_available() and cfg.device != "cpu"
    n = cfg.workers or (max(1, torch.cuda.device_count()) if gpu else default_cpu_only_workers())
    # On a GPU, two partitions in flight per worker: one decodes its first batch while the other
    # computes (a task otherwise starts with the GPU idle). On a CPU, one per worker: torch's
    # threads split the cores among the workers (_torch_threads).
    with dask.config.set(WORKER_SETTINGS):
        if gpu:
            cpu = cfg.cpu_workers if cfg.cpu_workers is not None else default_cpu_workers(n)
            cluster = gpu_cluster(n, torch.cuda.device_count(), cpu_workers=cpu)
        else:
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
    client = Client(cluster)
    try:
        yield client
    finally:
        close_cluster(client, cluster)


def close_cluster(client, cluster, wait_s: float = 30.0) -> None:
    """Close ASAP's own cluster workers first, then the scheduler. Closing both at once lets a
    worker's heartbeat meet a closed scheduler, which distributed logs as an ERROR with a
    traceback at the end of a successful run (seen once at 100,000 images; dask/distributed
    #7105)."""
    try:
        cluster.scale(0)
        deadline = time.monotonic() + wait_s
        while cluster.workers and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.close()
        cluster.close()


def model_resources(client) -> dict | None:
    """The resources a task that runs a model asks for: ``GPU`` where some worker declares it
    (ASAP's GPU cluster, or workers started with ``--resources GPU=1``), so that the CPU-only
    workers beside them never get one; else none."""
    workers = client.scheduler_info()["workers"].values()
    if any(GPU_RESOURCE in (w.get("resources") or {}) for w in workers):
        return {GPU_RESOURCE: 1}
    return None


def _torch_threads(cfg: RunConfig, client) -> int | None:
    """CPU threads per worker for torch (Dask's nanny pins OMP to 1 thread otherwise)."""
    if cfg.scheduler:
        return None
    n = len(client.scheduler_info()["workers"]) or 1
    return max(1, (os.cpu_count() or 1) // n)


def _versions() -> dict:
    import dask
    import open_clip
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "dask": dask.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


def _init_meta(cfg: RunConfig, paths: RunPaths, fresh: bool) -> dict:
    from .schema import read_run_json

    if fresh and paths.root.exists():
        shutil.rmtree(paths.root)
    paths.create()
    if paths.run_json.exists():
        meta = read_run_json(paths.root)
        old = meta["config"]
        new = json.loads(json.dumps(cfg.to_dict()))  # tuples as JSON lists, as stored
        if not paths.images.exists():
            # nothing was produced (a run that failed before ingest finished): the corrected
            # command starts afresh instead of being refused for its changed settings
            meta["config"] = new
            write_json(paths.run_json, meta)
            return meta
        defaults = json.loads(json.dumps(RunConfig(source="", out=".").to_dict()))

        def stored(k):  # settings added since the run was made read as their defaults
            v = old.get(k, defaults.get(k))
            return (
                {**defaults[k], **v}
                if isinstance(v, dict) and isinstance(defaults.get(k), dict)
                else v
            )

        diff = [k for k in IDENTITY_FIELDS if stored(k) != new.get(k)]
        if diff:
            raise RunDirectoryError(
                f"{paths.root} holds a run with different {', '.join(diff)}; resume it with the "
                "same settings, pass --fresh to start over, or choose another --out."
            )
        meta["config"] = new
        return meta
    meta = {
        "schema_version": SCHEMA_VERSION,
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "versions": _versions(),
        "stages": {},
        "timings": {},
    }
    write_json(paths.run_json, meta)
    return meta


def stage_ingest(cfg: RunConfig, paths: RunPaths, client) -> dict:
    found = ingest_mod.discover_source(cfg.source, cfg.columns)
    cands = found.candidates
    if not cands:
        raise FileNotFoundError(
            f"no images found under {cfg.source}. {ingest_mod.LAYOUT_HELP} "
            "(see `asap run --help`; `asap scan SOURCE` shows what ASAP finds)"
        )
    if not any(c.label is not None for c in cands):
        raise ValueError(ingest_mod.unlabelled_help(cands, cfg.source, notes=found.notes))
    chunks = [cands[i : i + INGEST_CHUNK] for i in range(0, len(cands), INGEST_CHUNK)]
    futs = []
    for s in range(0, len(chunks), INGEST_WAVE):
        futs += client.map(
            ingest_mod.inspect_candidates,
            chunks[s : s + INGEST_WAVE],
            max_pixels=cfg.max_pixels,
            min_side=cfg.min_side,
            pure=False,
        )
    results = gather_watched(client, futs)
    images, notes = ingest_mod.finalize_with_notes(
        pd.concat([r[0] for r in results], ignore_index=True)
    )
    rejects = pd.concat([r[1] for r in results], ignore_index=True)
    if images.empty:
        raise ValueError(
            f"none of the {len(cands)} images under {cfg.source} could be used; "
            f"reasons: {rejects['reason'].value_counts().to_dict()}"
        )
    if not cfg.encoder_checkpoint and images["label"].nunique() < 2:
        have = "real" if images["label"].iloc[0] == 0 else "fake"
        unlabelled = [c for c in cands if c.label is None]
        hint = ingest_mod.unlabelled_help(cands, cfg.source, notes=found.notes) if unlabelled else (
            f"{ingest_mod.LAYOUT_HELP}, or pass --encoder CKPT to explain with a trained encoder."
        )  # fmt: skip
        raise ValueError(
            f"every usable image under {cfg.source} is {have}: training needs real and fake "
            f"images. {hint}"
        )
    write_table(paths.rejects, rejects, REJECT_COLUMNS)
    write_table(paths.images, images, IMAGE_COLUMNS)  # written last: marks ingest done
    return {"layouts": found.layouts, **notes, **ingest_mod.summarize(images, rejects)}


def stage_train(cfg: RunConfig, paths: RunPaths, images: pd.DataFrame, client=None) -> dict:
    import torch

    from .encoder import create_encoder, load_encoder, save_encoder
    from .train import train_encoder

    if cfg.encoder_checkpoint:
        model = load_encoder(cfg.encoder_checkpoint)
        return {"encoder_sha256": save_encoder(model, paths.encoder), "trained": False}
    torch.manual_seed(cfg.train.seed)
    model = create_encoder(cfg.encoder)
    from .trust import resolution_gap

    usable = images[images["duplicate_of"] < 0]
    gap = resolution_gap(usable["width"].to_numpy(), usable["height"].to_numpy(),
                         model.tower_size, model.tiles)  # fmt: skip
    if gap["note"]:  # said before the training it may waste, not after
        log.warning("note: %s", gap["note"])
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    embedder = None
    if cfg.encoder.frozen_backbone and client is not None:
        from .embed import DaskEmbedder

        # the frozen tower's embeddings: computed by the workers (their GPUs), not the driver
        embedder = DaskEmbedder(client, cfg.encoder, paths.root / "model" / "embed-tmp",
                                chunk=cfg.partition_size, batch_size=cfg.batch_size,
                                device=cfg.device, torch_threads=_torch_threads(cfg, client),
                                precision=cfg.precision, progress=cfg.progress,
                                decode=cfg.decode,
                                resources=model_resources(client))  # fmt: skip
    try:
        # a tower trained from scratch: its images decoded by the workers, not in this process
        info = train_encoder(model, images, cfg.train, device=device, embedder=embedder,
                             client=client)  # fmt: skip
    finally:
        if embedder is not None:
            embedder.cleanup()
    # the checkpoint holds only what the training determines, so that two identical trainings
    # give byte-identical files (the same model.sha256); timings live in run.json
    sha = save_encoder(model.cpu(), paths.encoder, extra=deterministic(info))
    return {"encoder_sha256": sha, "trained": True, "resolution": gap, **info}


def deterministic(info: dict) -> dict:
    """``info`` without wall-clock fields (keys ending in ``seconds``), recursively."""
    if isinstance(info, dict):
        return {k: deterministic(v) for k, v in info.items() if not str(k).endswith("seconds")}
    if isinstance(info, list):
        return [deterministic(v) for v in info]
    return info


def partitions(images: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    images = images.sort_values("id")
    return [images.iloc[i : i + size] for i in range(0, len(images), size)]


def stage_encode(cfg: RunConfig, paths: RunPaths, images: pd.DataFrame, sha: str, client) -> dict:
    parts = partitions(images, cfg.partition_size)
    todo = [i for i in range(len(parts)) if not paths.part_features(i).exists()]
    _say(cfg, f"encode+explain: {len(parts)} partitions, {len(parts) - len(todo)} already done")
    threads = _torch_threads(cfg, client)
    resources = model_resources(client)
    limits = {"max_pixels": cfg.max_pixels, "min_side": cfg.min_side}
    from .worker import encode_partition

    futs = [
        client.submit(
            encode_partition,
            i,
            parts[i]["id"].to_numpy(),
            parts[i]["path_bytes"].tolist(),
            str(paths.root.resolve()),
            str(paths.encoder.resolve()),
            sha,
            batch_size=cfg.batch_size,
            maps=cfg.maps,
            compare=cfg.compare_maps,
            device=cfg.device,
            precision=cfg.precision,
            decode=cfg.decode,
            torch_threads=threads,
            limits=limits,
            # the patch descriptors come from the batches on the device (issue 10)
            patterns=cfg.patterns if cfg.patterns.enabled else None,
            n_parts=len(parts),
            pure=False,
            key=f"asap-encode-{sha[:12]}-{i}",
            resources=resources,
        )
        for i in todo
    ]
    t0 = time.perf_counter()
    n = 0
    used: dict[str, set] = {"device": set(), "precision": set()}
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(futs), desc="partitions", unit="part", file=sys.stderr)
    # Test hook for the kill-and-resume test: SIGKILL this process group (driver, scheduler and
    # workers alike) once that many partitions came back, as a crash at a known point would.
    kill_after = int(os.environ.get("ASAP_TEST_KILL_AFTER_PARTS", "0"))
    try:
        for done, fut in enumerate(as_completed_watched(client, futs), 1):
            res = fut.result()
            n += res["n"]
            for k in used:
                if res.get(k):
                    used[k].add(res[k])
            if bar:
                bar.update(1)
            if done == kill_after:
                import signal

                os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        if bar:
            bar.close()
    secs = time.perf_counter() - t0
    return {
        "partitions": len(parts),
        "computed": len(todo),
        "images": n,
        "seconds": secs,
        **{k: sorted(v) for k, v in used.items()},  # what the workers ran on
    }


def collect_features(paths: RunPaths, n_parts: int) -> pd.DataFrame:
    frames = [read_table(paths.part_features(i), PART_FEATURE_COLUMNS) for i in range(n_parts)]
    feats = pd.concat(frames, ignore_index=True) if frames else empty_table(PART_FEATURE_COLUMNS)
    return feats.sort_values("id").reset_index(drop=True)


def dask_mapper(client):
    """``mapper(fn, obj, chunks)`` for pipeline.layout: ``obj`` sent to the workers once, one
    task per chunk, the results in order."""

    def mapper(fn, obj, chunks):
        [shared] = client.scatter([obj], hash=False)
        futs = [client.submit(fn, shared, c, pure=False) for c in chunks]
        return client.gather(futs)

    return mapper


# scikit-learn modules that stages import lazily, some of them in a background thread (the
# layout beside the pattern stage, UMAP's warm-up beside training; UMAP imports scikit-learn)
SHARED_MODULES = ("sklearn.base", "sklearn.cluster", "sklearn.decomposition", "sklearn.metrics")


def import_shared_modules() -> None:
    """Import SHARED_MODULES in this thread before any background thread starts: two threads
    that import scikit-learn's circular package at once can see it half-initialised (a clean-
    clone test run, 2026-12-03: "cannot import name 'clone' from partially initialized module
    'sklearn.base'" in the pattern stage's k-means while the layout's PCA imported it)."""
    import importlib

    for name in SHARED_MODULES:
        importlib.import_module(name)


def stage_layout(cfg: RunConfig, paths: RunPaths, images: pd.DataFrame, client=None) -> dict:
    from .metrics import detection_metrics
    from .schema import DISTILLED_COLUMNS

    n_parts = len(partitions(images, cfg.partition_size))
    feats = collect_features(paths, n_parts)
    if feats["id"].duplicated().any():
        raise RunDirectoryError(f"{paths.root}: duplicated ids across partitions")
    mapper = dask_mapper(client) if client is not None else None
    xy = compute_layout(feats[DISTILLED_COLUMNS].to_numpy(np.float32), cfg.layout, cfg.seed,
                        mapper=mapper)  # fmt: skip
    feats["x"], feats["y"] = xy[:, 0], xy[:, 1]
    part_rejects = [
        read_table(paths.part_rejects(i), REJECT_COLUMNS)
        for i in range(n_parts)
        if paths.part_rejects(i).exists()
    ]
    if part_rejects:
        rejects = read_table(paths.rejects, REJECT_COLUMNS)
        rejects = pd.concat([rejects[rejects["stage"] != "encode"], *part_rejects])
        write_table(paths.rejects, rejects, REJECT_COLUMNS)
    write_table(paths.features, feats, FEATURE_COLUMNS)
    joined = feats.merge(images[["id", "label", "generator", "source", "split"]], on="id")
    test = joined[(joined["split"] == "test")]
    from .schema import read_run_json

    stages = read_run_json(paths.root).get("stages", {})
    held_out = stages.get("ingest", {}).get("held_out", "test")
    from .trust import detector_check, with_training

    check = detector_check(test["label"].to_numpy(), test["p_fake"].to_numpy(), held_out)
    check = with_training(check, stages.get("train"))
    metrics = {
        "held_out": held_out,  # what the "test" metrics were computed on
        "test": detection_metrics(test),
        "all_splits": detection_metrics(joined),
        "n_test": len(test),
        "detector": check,  # pipeline.trust: does it beat chance on the held-out images?
    }
    write_json(paths.metrics, metrics)
    if check["verdict"] in ("chance", "below chance"):
        log.warning("WARNING: %s", check["message"])
    return {"points": len(feats), "method": cfg.layout, "seed": cfg.seed,
            "detector": check["verdict"]}  # fmt: skip


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_rss(client) -> dict:
    """Peak resident memory so far of the driver and of the largest worker process, in MiB."""
    try:
        workers = max(client.run(_peak_rss_mb).values(), default=0.0)
    except Exception:  # a worker that went away: the driver's figure still counts
        workers = None
    return {"driver_peak_rss_mb": _peak_rss_mb(), "worker_peak_rss_mb": workers}


class Background:
    """``fn(*args)`` on a daemon thread of the driver; ``result()`` returns its value and its
    seconds, or raises what it raised. A daemon, so an interrupted run does not wait for it."""

    def __init__(self, fn, *args):
        self._out: tuple | None = None
        self._err: BaseException | None = None

        def target():
            t0 = time.perf_counter()
            try:
                self._out = (fn(*args), time.perf_counter() - t0)
            except BaseException as e:  # re-raised in the caller's thread by result()
                self._err = e

        self._thread = threading.Thread(target=target, name="asap-background", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> tuple:
        self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out


def run_pipeline(cfg: RunConfig, fresh: bool = False) -> RunPaths:
    """Run (or resume) every stage; returns the run directory's paths."""
    paths = RunPaths(Path(cfg.out))
    meta = _init_meta(cfg, paths, fresh)
    stages, timings = meta.setdefault("stages", {}), meta.setdefault("timings", {})

    def done(name: str, info: dict, t0: float, seconds: float | None = None) -> None:
        stages[name] = info
        timings[name] = round(time.perf_counter() - t0 if seconds is None else seconds, 3)
        meta.setdefault("resources", {})[name] = peak_rss(client)
        write_json(paths.run_json, meta)

    import_shared_modules()  # before any stage runs in a background thread
    with dask_client(cfg) as client:
        _say(cfg, f"Dask dashboard: {client.dashboard_link}")
        if cfg.layout == "umap" and not paths.features.exists() and model_resources(client):
            # With GPU workers the driver's cores idle until the layout: compile UMAP's code
            # meanwhile (pipeline.layout.warm_up: on an empty Numba cache, 88 s of a 2-core VM
            # that the layout of 100,000 points then no longer spends, 116 -> 37 s)
            from .layout import warm_up
            from .schema import N_DISTILLED

            Background(warm_up, cfg.seed, N_DISTILLED)
        if not paths.images.exists():
            t0 = time.perf_counter()
            _say(cfg, f"ingest: scanning {cfg.source}")
            done("ingest", stage_ingest(cfg, paths, client), t0)
            info = stages["ingest"]
            _say(cfg, f"ingest: {info['images']} images, {info['rejected']} rejected")
        images = read_table(paths.images, IMAGE_COLUMNS)
        if not paths.encoder.exists():
            t0 = time.perf_counter()
            _say(cfg, "train: fitting the encoder on the train split")
            done("train", stage_train(cfg, paths, images, client), t0)
        from .encoder import file_sha256, read_encoder_config

        sha = file_sha256(paths.encoder)
        used = read_encoder_config(paths.encoder)  # the checkpoint's, which may be --encoder's
        meta["model"] = {
            "name": used.model_name,
            "pretrained": used.pretrained,
            "stem": used.stem,
            "tiles": used.tiles,
            "sha256": sha,
        }
        from .layout import WARM_UP_POINTS

        warming = None
        if (cfg.layout == "umap" and not model_resources(client) and len(images) > WARM_UP_POINTS
                and not paths.features.exists()):  # fmt: skip
            # A CPU run: compile UMAP's code during the encode stage on a thread of the lowest
            # priority, from the cycles the workers leave, instead of after it, in the layout's
            # path (on a 2-core VM 28 s with a warm Numba cache, 105 s with an empty one)
            from .layout import warm_up
            from .schema import N_DISTILLED

            warming = Background(warm_up, cfg.seed, N_DISTILLED, 19)
        t0 = time.perf_counter()
        enc = stage_encode(cfg, paths, images, sha, client)
        if warming is not None:
            state = f"in {warming.result()[0]:.0f} s" if warming.done() else "not finished: goes on"
            _say(cfg, f"layout: UMAP's code compiled beside the encode stage: {state}")
        if enc["computed"] or "encode" not in stages:
            done("encode", enc, t0)
        if enc["computed"]:  # new partitions (with their patch files): regroup the patches
            paths.patterns.unlink(missing_ok=True)
        # The layout is redone only when features changed or another method or seed is asked for.
        prev = stages.get("layout", {})
        current = prev.get("method") == cfg.layout and prev.get("seed") == cfg.seed
        layout = None
        if enc["computed"] or not paths.features.exists() or not current:
            from .layout import FIT_SAMPLE

            n = len(images)
            how = (
                f", fitted on {FIT_SAMPLE:,}, the rest placed"
                if cfg.layout == "umap" and n > FIT_SAMPLE
                else ""
            )
            # the layout (CPU, in this process) runs beside the pattern stage, which needs
            # only the partitions' files and runs on the workers
            _say(cfg, f"layout: {cfg.layout} of {n:,} images{how}")
            layout = Background(stage_layout, cfg, paths, images, client)
        if cfg.patterns.enabled:
            from .patterns import stage_patterns

            t0 = time.perf_counter()
            _say(cfg, "patterns: top patches, clustering, impact, faithfulness")
            info = stage_patterns(
                cfg,
                paths,
                images,
                partitions(images, cfg.partition_size),
                sha,
                client,
                stages.get("patterns"),
            )
            if not info.get("reused"):
                done("patterns", info, t0)
        if layout is not None:
            t0 = time.perf_counter()
            info, seconds = layout.result()
            done("layout", info, t0, seconds)
            _say(cfg, f"layout: done in {seconds:.0f} s")
    _say(cfg, f"done: {paths.root}")
    return paths
