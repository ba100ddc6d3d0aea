"""One worker per GPU, chosen by the worker's environment (pipeline.devices), tested on the CPU:
the choice is a function of the environment and of which GPUs other processes hold."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.devices import claim_gpu, gpu_worker_env, resolve_device, visible_gpus
from pipeline.runner import (
    default_cpu_only_workers,
    default_cpu_workers,
    gpu_cluster,
    model_resources,
)


def _never(visible):
    raise AssertionError("no claim expected")


def test_explicit_and_trivial_cases():
    assert resolve_device({"ASAP_DEVICE": "cuda:3"}, cuda_available=True, device_count=4) == (
        "cuda:3"
    )
    assert resolve_device({}, cuda_available=False, device_count=0, claim=_never) == "cpu"
    assert resolve_device({}, cuda_available=True, device_count=1, claim=_never) == "cuda:0"
    # a worker that sees one GPU uses it, whatever its physical id
    env = {"CUDA_VISIBLE_DEVICES": "5"}
    assert resolve_device(env, cuda_available=True, device_count=1, claim=_never) == "cuda:0"


def test_several_gpus_claim_in_visible_order():
    seen = []

    def claim(visible):
        seen.append(visible)
        return 2, True

    env = {"CUDA_VISIBLE_DEVICES": "3,1,2,0"}
    assert resolve_device(env, cuda_available=True, device_count=4, claim=claim) == "cuda:2"
    assert seen == [["3", "1", "2", "0"]]
    assert visible_gpus({}, 3) == ["0", "1", "2"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-ab12, GPU-cd34"}, 2) == [
        "GPU-ab12",
        "GPU-cd34",
    ]


def test_worker_envs_put_each_workers_gpu_first():
    envs = gpu_worker_env(4, {}, 4)
    lists = [e["CUDA_VISIBLE_DEVICES"].split(",") for e in envs]
    assert [ls[0] for ls in lists] == ["0", "1", "2", "3"]
    assert all(sorted(ls) == ["0", "1", "2", "3"] for ls in lists)
    # a restriction of the parent's CUDA_VISIBLE_DEVICES is kept; more workers than GPUs share
    envs = gpu_worker_env(3, {"CUDA_VISIBLE_DEVICES": "2,5"}, 2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2,5", "5,2", "2,5"]
    with pytest.raises(ValueError, match="no GPU"):
        gpu_worker_env(1, {}, 0)


CLAIMER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipeline.devices import claim_gpu
    pos, exclusive = claim_gpu(sys.argv[2].split(","), Path(sys.argv[1]))
    print(pos, exclusive, flush=True)
    sys.stdin.read()  # hold the claim until the test closes stdin
    """
)


def test_processes_claim_distinct_gpus_and_release_on_exit(tmp_path):
    """Three processes that all see GPUs 0 and 1 (plain `dask worker --nworkers 3`): the first two
    get one each, the third shares; a GPU is free again once its holder exits."""

    def start():
        return subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(tmp_path), "0,1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.getcwd(),
        )

    procs = []
    try:
        got = []
        for _ in range(3):
            procs.append(start())
            got.append(procs[-1].stdout.readline().split())
        assert got[0] == ["0", "True"] and got[1] == ["1", "True"]
        assert got[2][1] == "False"
        procs[0].stdin.close()
        procs[0].wait(timeout=60)
        procs.append(start())
        assert procs[-1].stdout.readline().split() == ["0", "True"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.close()
                p.wait(timeout=60)


def _worker_choice(lock_dir):
    """What a worker process resolves, pretending it has CUDA with as many GPUs as it sees."""
    env = dict(os.environ)
    n = len(visible_gpus(env, 16)) if env.get("CUDA_VISIBLE_DEVICES") else 2
    claim = functools.partial(claim_gpu, directory=lock_dir)
    pos = resolve_device(env, cuda_available=True, device_count=n, claim=claim)
    return env.get("CUDA_VISIBLE_DEVICES", "").split(",")[int(pos.split(":")[1])] if n > 1 else pos


@pytest.mark.slow
def test_local_gpu_cluster_gives_each_worker_its_own_gpu(tmp_path):
    """ASAP's GPU cluster started for real (on the CPU: only the environment matters): its two
    workers end on different physical GPUs, not both on cuda:0 as worker-name parsing did."""
    from distributed import Client

    with gpu_cluster(2, 2, threads=1, env={}) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        envs = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
        assert sorted(envs.values()) == ["0,1", "1,0"]
        physical = client.run(_worker_choice, tmp_path)
        assert sorted(physical.values()) == ["0", "1"]


def test_cpu_workers_take_the_cores_left_after_four_per_gpu():
    assert default_cpu_workers(1, cores=16) == 12
    assert default_cpu_workers(8, cores=64) == 32
    assert default_cpu_workers(1, cores=2) == 0  # a small machine: the GPU worker alone


def test_a_machine_without_gpus_gets_a_worker_per_core_up_to_four(tmp_path):
    from pipeline.config import RunConfig
    from pipeline.runner import CPU_WORKERS_MAX, _torch_threads, dask_client

    assert [default_cpu_only_workers(cores=c) for c in (1, 2, 3, 16, 64)] == [1, 2, 3, 4, 4]
    assert CPU_WORKERS_MAX == 4
    cfg = RunConfig(source=str(tmp_path), out=str(tmp_path / "run"), device="cpu")
    with dask_client(cfg) as client:  # the cluster `asap run` starts here, and torch's share
        n = len(client.scheduler_info()["workers"])
        assert n == default_cpu_only_workers()
        assert _torch_threads(cfg, client) == max(1, (os.cpu_count() or 1) // n)


def _gpu_visible() -> str:
    return os.environ["CUDA_VISIBLE_DEVICES"]


@pytest.mark.slow
def test_model_tasks_run_only_on_gpu_workers_beside_cpu_workers():
    """ASAP's GPU cluster with CPU-only workers beside it: the CPU workers see no GPU, the GPU
    worker declares the resource, and a task that asks for it (every task that runs a model)
    lands on the GPU worker alone, while plain tasks use every worker."""
    from distributed import Client

    with gpu_cluster(1, 1, threads=1, env={}, cpu_workers=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(3)
        envs = client.run(_gpu_visible)
        assert sorted(envs.values()) == ["", "", "0"]
        gpu_addr = next(a for a, v in envs.items() if v == "0")
        res = model_resources(client)
        assert res == {"GPU": 1}
        futs = [client.submit(_gpu_visible, pure=False, resources=res) for _ in range(12)]
        assert {f.result() for f in futs} == {"0"}
        assert {client.who_has(f)[f.key][0] for f in futs} == {gpu_addr}
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as plain:
        with Client(plain) as c2:
            assert model_resources(c2) is None  # no worker declares a GPU: no restriction


def test_default_batch_size_follows_the_device_and_threads():
    import torch

    from pipeline.devices import CPU_BATCH_PER_THREAD, GPU_BATCH, default_batch_size

    assert [default_batch_size("cpu", t) for t in (1, 2, 3, 4, 16)] == [32, 64, 96, 128, 128]
    assert CPU_BATCH_PER_THREAD == 32 and GPU_BATCH == 128
    assert default_batch_size("cuda") == default_batch_size("cuda:1", 1) == GPU_BATCH
    # without a thread count: this process's torch threads
    assert default_batch_size("cpu") == min(GPU_BATCH, 32 * torch.get_num_threads())
