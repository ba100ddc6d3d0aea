"""The arithmetic the encoder and its maps run in, chosen once per run (``asap run --precision``).

- ``fp32``: full float32 everywhere (the reference).
- ``tf32``: float32 tensors, matrix products on a GPU's tensor cores with TF32 inputs (10-bit
  mantissa, float32 accumulation): several times faster on an A100/H100/H200. On a CPU it is fp32.
- ``bf16``: bfloat16 autocast for the forward pass and the gradients of the maps (GPU or CPU).
- ``auto`` (default): ``tf32`` on a GPU, ``fp32`` on a CPU.

Maps in reduced precision stay equivalent to fp32 maps: tests/pipeline/test_precision.py bounds
the rank correlation and the share of images whose top patch changes, on the committed golden
model; ``benchmarks/scale.py`` measures the speed of each on the machine at hand."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

PRECISIONS = ("auto", "fp32", "tf32", "bf16")


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``auto`` made concrete for ``device``; ``tf32`` on a CPU is plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    cuda = torch.device(device).type == "cuda"
    if precision == "auto":
        return "tf32" if cuda else "fp32"
    if precision == "tf32" and not cuda:
        return "fp32"
    return precision


_LOCK = threading.Lock()
_ACTIVE = {"n": 0, "saved": None}  # contexts open in this process (a GPU worker runs two threads)


@contextmanager
def compute_precision(precision: str, device: str | torch.device):
    """Run the enclosed forward and backward passes in ``precision`` on ``device``. The float32
    matmul setting is process-wide: the first context to open saves it and the last to close
    restores it (two partitions in flight on one worker share one run's precision)."""
    precision = resolve_precision(precision, device)
    kind = torch.device(device).type
    if kind == "cuda":
        with _LOCK:
            if _ACTIVE["n"] == 0:
                _ACTIVE["saved"] = (torch.get_float32_matmul_precision(),
                                    torch.backends.cudnn.allow_tf32)  # fmt: skip
            _ACTIVE["n"] += 1
            torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
            torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        if precision == "bf16":
            with torch.autocast(kind, dtype=torch.bfloat16):
                yield precision
        else:
            yield precision
    finally:
        if kind == "cuda":
            with _LOCK:
                _ACTIVE["n"] -= 1
                if _ACTIVE["n"] == 0:
                    matmul, cudnn = _ACTIVE["saved"]
                    torch.set_float32_matmul_precision(matmul)
                    torch.backends.cudnn.allow_tf32 = cudnn
