"""When to run matmuls in bf16: one policy for generation, training and evaluation.

Weights stay fp32 (master weights for training); speed comes from `torch.autocast` with bf16, which is only a
win where the hardware does bf16 matmuls natively: Intel CPUs with AMX tiles and NVIDIA GPUs from Ampere on.
Elsewhere bf16 on CPU is *emulated* and far slower than fp32 (measured on this project's AMD EPYC / AVX2 CI
machine: a 1024x1024 matmul takes ~180x longer under bf16 autocast), so "auto" must look at the hardware.

precision: "auto" (bf16 where native, else fp32), "bf16" (always, even if slow), "fp32" (never).

`DELTALEARN_NATIVE_BF16=1|0` overrides the CPU probe, so one machine can run the test suite (or anything else) as
a machine of the other kind would: 1 makes "auto" mean bf16 on this CPU, 0 makes it mean fp32.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import ContextManager, Optional

PRECISIONS = ("auto", "bf16", "fp32")
NATIVE_BF16_ENV = "DELTALEARN_NATIVE_BF16"


def native_bf16_override() -> Optional[bool]:
    """The value of DELTALEARN_NATIVE_BF16 (True/False), or None when unset."""
    raw = os.environ.get(NATIVE_BF16_ENV)
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    from deltalearn.recipe import ConfigError  # a ValueError the CLI prints as a one-line error

    raise ConfigError(f"environment variable {NATIVE_BF16_ENV} must be 1 or 0 (unset: probe the CPU), got {raw!r}")


def cpu_has_native_bf16() -> bool:
    """True on CPUs whose matmuls run bf16 natively (AMX tiles, or AVX512-BF16), unless DELTALEARN_NATIVE_BF16
    says otherwise."""
    forced = native_bf16_override()
    return cpu_probe_native_bf16() if forced is None else forced


@functools.lru_cache(maxsize=None)
def cpu_probe_native_bf16() -> bool:
    """What the CPU itself reports: AMX tiles or AVX512-BF16."""
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

        # not counting emulation: T4/V100 "support" bf16 only through slow emulated kernels
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if kind == "cpu":
        return cpu_has_native_bf16()
    return False


def autocast_context(precision: str, device) -> ContextManager:
    """`torch.autocast(device_type, bfloat16)` when `use_bf16`, else a no-op context."""
    if not use_bf16(precision, device):
        return contextlib.nullcontext()
    import torch

    return torch.autocast(_device_type(device), dtype=torch.bfloat16)
