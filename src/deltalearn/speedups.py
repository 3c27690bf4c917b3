"""The training loop's speed levers that depend on the hardware and the model, each measured before it was kept
(benchmarks/bench_train.py; numbers in benchmarks/README.md, Intel Xeon with AMX, 2 threads):

- `keep_freed_memory`: glibc hands every freed block above its mmap threshold (at most 32 MB) back to the kernel,
  and the next step faults the same memory in again, zero-filled. One DPO micro-batch of SmolLM2 made ~600k minor
  page faults that way (the LM head's logit chunks, the cast embedding, its fp32 gradient), 15-25% of the step in
  the kernel. Raising the threshold keeps freed memory in the heap for reuse: 0 faults after the first steps.
- `compile_layers`: `torch.compile` (inductor; on CPU its C++ backend, built with the machine's gcc) of each decoder
  layer, shapes dynamic so one compilation serves every micro-batch length. Under bf16 autocast the eager step is
  bound by what sits between the matmuls (casts, RMSNorm, rotary, SiLU, the attention kernel's backward), which
  inductor fuses: a bf16 micro-batch took about half the time in isolation, and training steps ran 1.3-1.5x faster in
  the benchmark's runs. In fp32 the step is matmul-bound and it gained ~5%, so "auto" compiles only under bf16, and
  only runs long enough to pay back a cold compilation (COMPILE_MIN_TOKENS) — never on whether inductor's cache is
  warm, which would make a job's path (and its bf16 rounding) depend on the machine's history.
- `attention_for`: on CPU, inductor fuses the plain ("eager") attention's softmax between its two matmuls and beats
  the flash kernel's backward (its slowest op, 18% of a bf16 step), while the eager form keeps a [B, H, L, L] score
  tensor per layer: used only up to `EAGER_ATTENTION_MAX_LEN` tokens.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Union

import torch
import torch.nn as nn

EAGER_ATTENTION_MAX_LEN = 1024
COMPILE_MIN_PARAMS = 50_000_000  # below this a step takes milliseconds and ~30 s of compilation never pays back
# Break-even measured on SmolLM2-135M, bf16, 2 AMX cores, cold caches: compiling the reference and the policy cost
# ~70 s and saved ~0.8 ms per trained token (356 vs 275 tokens/s), so a run pays it back from ~85k tokens
COMPILE_MIN_TOKENS = 100_000


def keep_freed_memory(device=None) -> bool:
    """Keep freed memory in glibc's heap instead of unmapping it (Linux/glibc only; a no-op elsewhere). Returns
    whether it took effect. Process-wide and idempotent. Not when the model lives on `device` other than the CPU:
    then the host only ever frees (the model's host copy after it moves to the GPU), and keeping that resident cost
    6.74 GiB where 0.22 GiB should remain in a measurement (~32 GB per rank at 8B)."""
    if platform.system() != "Linux" or (device is not None and torch.device(device).type != "cpu"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: leave its allocator alone
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    big = 2 ** 31 - 1  # mallopt takes a C int
    return bool(libc.mallopt(m_mmap_threshold, big) and libc.mallopt(m_trim_threshold, big)
                and libc.mallopt(m_top_pad, 256 << 20))


def should_compile(setting: Union[str, bool], *, bf16: bool, n_params: int, train_tokens: int, distributed: bool,
                   gradient_checkpointing: bool, lora: bool) -> bool:
    """`train.compile`: True / False as given; "auto" compiles where it was measured to pay: bf16, a model of at
    least COMPILE_MIN_PARAMS, a run of at least COMPILE_MIN_TOKENS trained tokens, one process, no checkpointing or
    LoRA (combinations not measured stay eager)."""
    if isinstance(setting, bool):
        return setting
    return (bf16 and n_params >= COMPILE_MIN_PARAMS and train_tokens >= COMPILE_MIN_TOKENS
            and not (distributed or gradient_checkpointing or lora))


def attention_for(device: torch.device, max_len: int, compiled: bool) -> str | None:
    """The attention implementation to switch to, or None to keep the model's own."""
    if compiled and device.type == "cpu" and max_len <= EAGER_ATTENTION_MAX_LEN:
        return "eager"
    return None


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model: the modules its `_no_split_modules` names (the unit that
    FSDP wraps and device maps keep whole), e.g. LlamaDecoderLayer."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def compile_layers(model: nn.Module, *, attention: str | None = None) -> int:
    """Compile every decoder layer in place (dynamic shapes); returns how many were compiled. `attention` switches
    the model's attention implementation first."""
    if attention is not None:
        model.set_attn_implementation(attention)
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
