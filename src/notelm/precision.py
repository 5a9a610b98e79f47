"""Arithmetic precision of the neural models: ``"auto"``, ``"fp32"`` or ``"bf16"``, chosen in one place.

``bf16`` runs every forward pass under bf16 autocast: matrix products (linear
layers, the LSTM's oneDNN kernels, attention) in bfloat16; the element-wise work
on their results (residual sums, GELU, layer norm, dropout, the transformer's
attention softmax) reads and writes bf16 and sums in fp32 inside; the loss is
computed in fp32, and the weights (the master copy the optimizer updates) stay
fp32. So a checkpoint is the same whatever precision trained it, and any
checkpoint runs in any precision.

``auto`` picks bf16 only where it was measured to pay:

* training on a CPU with AMX matrix units (``amx_bf16``): the ``lstm`` preset
  trains 1.9-2.1x and the ``transformer`` 1.8-2.0x as fast (``benchmarks/train_throughput.py``,
  README "Speed");
* training on a CUDA GPU that supports bf16;
* not on a CPU with only AVX512-BF16 and no AMX (not measured), and not for
  generation on a CPU: one event per forward step is too little work for the
  matrix units, and the casts cost more than they save (untrained presets, events
  per second fp32 / bf16: LSTM one piece ~600 / ~440, 64 pieces even; transformer
  one piece 390-560 / 240-290).

``bf16`` asked for explicitly runs on any device (PyTorch emulates it where the
hardware lacks it, slowly); ``fp32`` never casts.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_DOC = ("'fp32'; 'bf16': bf16 autocast (fp32 weights and loss); 'auto': bf16 where measured to be "
                 "faster (training on CPUs with AMX; CUDA GPUs with bf16), else fp32")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bf16_hardware(device) -> str:
    """What runs bf16 natively on ``device``: ``"amx"``, ``"avx512_bf16"``, ``"cuda"`` or ``""`` (nothing)."""
    import torch  # here, not at the top: config.py reads PRECISIONS without loading torch

    device = torch.device(device)
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported() else ""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else ""


def resolve(precision: str, device, work: str = "train") -> str:
    """``"fp32"`` or ``"bf16"``: what ``precision`` means for ``work`` (``"train"`` or ``"generate"``) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    hardware = bf16_hardware(device)
    if hardware == "cuda" or (hardware == "amx" and work == "train"):
        return "bf16"
    return "fp32"


def autocast(device, precision: str):
    """The context of a forward pass in ``precision`` (``"fp32"`` / ``"bf16"``, as ``resolve`` returns)."""
    import torch

    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
