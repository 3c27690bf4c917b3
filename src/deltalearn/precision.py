"""When to run matmuls in bf16: one policy for generation, training and evaluation.

Weights stay fp32 (master weights for training); speed comes from `torch.autocast` with bf16, which is only a
win where the hardware does bf16 matmuls natively: Intel CPUs with AMX tiles and NVIDIA GPUs from Ampere on.
Elsewhere bf16 on CPU is *emulated* and far slower than fp32 (measured on this project's AMD EPYC / AVX2 CI
machine: a 1024x1024 matmul takes ~180x longer under bf16 autocast), so "auto" must look at the hardware.

precision: "auto" (bf16 where native, else fp32), "bf16" (always, even if slow), "fp32" (never).
"""

from __future__ import annotations

import contextlib
import functools
from typing import ContextManager

PRECISIONS = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True on CPUs whose matmuls run bf16 natively (AMX tiles, or AVX512-BF16)."""
    import torch

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a probe that fails means "not known to be supported"
            pass
    return False


def _device_type(device) -> str:
    if device is None:
        return "cpu"
    return getattr(device, "type", None) or str(device).split(":")[0]


def use_bf16(precision: str, device) -> bool:
    """Whether to autocast to bf16 on `device` (a torch.device or a string like 'cpu', 'cuda:0')."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    kind = _device_type(device)
    if kind == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == "cpu":
        return cpu_has_native_bf16()
    return False


def autocast_context(precision: str, device) -> ContextManager:
    """`torch.autocast(device_type, bfloat16)` when `use_bf16`, else a no-op context."""
    if not use_bf16(precision, device):
        return contextlib.nullcontext()
    import torch

    return torch.autocast(_device_type(device), dtype=torch.bfloat16)
