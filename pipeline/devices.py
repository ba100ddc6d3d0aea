"""Which device a Dask worker computes on: one worker per GPU, chosen by the worker's environment,
never by its name.

A worker resolves its device once per process (``worker_device``), in this order:

1. ``ASAP_DEVICE`` in the worker's environment (``cpu``, ``cuda:N``): the operator's choice;
2. no CUDA: ``cpu``; one visible GPU: ``cuda:0``;
3. several visible GPUs: the first one, in ``CUDA_VISIBLE_DEVICES`` order, that no other process on
   this machine holds. A worker holds its GPU by an exclusive lock on a file named after the
   physical device (``claim_gpu``) until it exits. ASAP's own cluster (``gpu_worker_env``) and
   dask-cuda (``LocalCUDACluster``, ``dask cuda worker``) put each worker's GPU first in its list,
   so each gets that one; plain ``dask worker --nworkers 4`` on a 4-GPU machine (every worker sees
   the same list) still ends with one worker per GPU. When every GPU is held the worker shares one
   and says so in its log.

An explicit ``--device cuda:N`` of the run overrides all of this; ``--device cuda`` means "this
worker's GPU".
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ENV_DEVICE = "ASAP_DEVICE"
_RESOLVED: dict[str, str] = {}  # per process: the device this worker resolved
_LOCKS: list = []  # open lock files: the claim lasts as long as the process


def lock_dir() -> Path:
    return Path(os.environ.get("ASAP_LOCK_DIR") or tempfile.gettempdir())


def claim_gpu(visible: list[str], directory: Path | None = None) -> tuple[int, bool]:
    """(position in ``visible``, exclusive): the first GPU of ``visible`` (physical ids or UUIDs, in
    CUDA_VISIBLE_DEVICES order) whose lock file this process could lock exclusively, else
    (pid mod n, False) when other processes hold every one."""
    import fcntl

    directory = directory or lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for pos, gpu in enumerate(visible):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", gpu)
        f = open(directory / f"asap-gpu-{name}.lock", "a+")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _LOCKS.append(f)
        return pos, True
    return os.getpid() % len(visible), False


def visible_gpus(env, device_count: int) -> list[str]:
    """The physical ids of the GPUs this process sees, in CUDA order."""
    listed = [s.strip() for s in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if s.strip()]
    return listed[:device_count] if listed else [str(i) for i in range(device_count)]


def resolve_device(
    env=None,
    *,
    cuda_available: bool,
    device_count: int,
    claim=claim_gpu,
) -> str:
    """The device of a worker with environment ``env`` (see the module's docstring)."""
    env = os.environ if env is None else env
    explicit = env.get(ENV_DEVICE, "").strip()
    if explicit:
        return explicit
    if not cuda_available or device_count < 1:
        return "cpu"
    if device_count == 1:
        return "cuda:0"
    visible = visible_gpus(env, device_count)
    pos, exclusive = claim(visible)
    if not exclusive:
        log.warning(
            "every GPU this worker sees (%s) is held by another ASAP worker; sharing cuda:%d. "
            "Run one worker per GPU (dask cuda worker, or CUDA_VISIBLE_DEVICES per worker).",
            ",".join(visible),
            pos,
        )
    return f"cuda:{pos}"


def worker_device(preferred: str | None = None) -> str:
    """The device this process computes on: ``preferred`` when it names one (``cpu``,
    ``cuda:N``), else this worker's own GPU (``resolve_device``), resolved once per process."""
    if preferred and preferred != "cuda":
        return preferred
    if "device" not in _RESOLVED:
        import torch

        available = torch.cuda.is_available()
        _RESOLVED["device"] = resolve_device(
            cuda_available=available, device_count=torch.cuda.device_count() if available else 0
        )
    device = _RESOLVED["device"]
    if preferred == "cuda" and not device.startswith("cuda"):
        return "cuda"
    return device


# Images per forward pass when the run does not set --batch-size. On a CPU, per torch thread: the
# tiny model's maps and patch descriptors on 512 pre-decoded images (the 100 k scale set), median
# of 3, this 2-core AMD EPYC VM: one thread 135 / 130 / 124 / 107 img/s at batches 32 / 64 / 128
# / 256, two threads 233 / 246 / 235 / 195 (small batches stay in the core's caches; a CPU run
# has one worker with one thread per core). On a GPU, 128 as before (a card needs large batches
# to fill; `--batch-size 512` in benchmarks/gpu.sh).
CPU_BATCH_PER_THREAD = 32
GPU_BATCH = 128


def default_batch_size(device: str, threads: int | None = None) -> int:
    """Images per forward pass on ``device`` with ``threads`` torch threads (default: this
    process's)."""
    import torch

    if torch.device(device).type != "cpu":
        return GPU_BATCH
    threads = threads or torch.get_num_threads()
    return min(GPU_BATCH, CPU_BATCH_PER_THREAD * max(1, threads))


def gpu_worker_env(n_workers: int, env, device_count: int) -> list[dict]:
    """The environment of each of ``n_workers`` GPU workers started on this machine: worker i sees
    GPU i first (``CUDA_VISIBLE_DEVICES`` rotated as dask-cuda does, so peers stay reachable); a
    restriction in this process's own ``CUDA_VISIBLE_DEVICES`` is kept."""
    ids = visible_gpus(env, device_count)
    if not ids:
        raise ValueError("no GPU to give the workers")
    return [
        {"CUDA_VISIBLE_DEVICES": ",".join(ids[w % len(ids) :] + ids[: w % len(ids)])}
        for w in range(n_workers)
    ]
