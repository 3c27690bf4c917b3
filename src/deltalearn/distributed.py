"""What a multi-process run needs beyond accelerate: one decision for all ranks, file hashing split across ranks, the
parameter dtype the engine computes in, the launch config's precision checked against the recipe, and loading a
model whole while ZeRO-3 partitions every other load.

Rules (each was a hang, crash or silent mismatch at 8 GPUs):
- A choice that reads the file system (reference-cache hit or miss, which checkpoint to resume from) is made by the
  main process and broadcast, then a barrier: ranks with their own caches, or a file renamed by one rank while
  another reads it, would otherwise take different paths into different collectives.
- Under DeepSpeed ZeRO-3 accelerate keeps a global `HfDeepSpeedConfig` alive, and transformers then builds every
  `from_pretrained` model inside `deepspeed.zero.Init`: its parameters are empty placeholders, and the build is a
  collective. Models that are not the trained policy (the reference, a model built for its parameter count, the
  plain copy a LoRA run merges into on the main process) are loaded `outside_zero3()`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from deltalearn.io import sha256_file
from deltalearn.recipe import ConfigError


class OtherRankFailed(RuntimeError):
    """Raised on the other ranks when the main process's decision failed (the main process raises the real error)."""


def distributed(acc) -> bool:
    return acc is not None and acc.num_processes > 1


def on_main(acc, fn):
    """`fn()` run by the main process only; every rank returns its result, or raises when it failed there."""
    if not distributed(acc):
        return fn()
    box, error = [None], None
    if acc.is_main_process:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others heard of it
            error, box[0] = e, ("error", f"{type(e).__name__}: {e}")
    torch.distributed.broadcast_object_list(box, src=0)
    acc.wait_for_everyone()
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise OtherRankFailed(f"the main process failed: {value}")
    return value


def hash_files(root: Path, names: list[str], acc=None, with_size: bool = False) -> dict:
    """sha256 of each file `root/name` (None: missing), the files split across ranks (each rank hashes every
    world-th, largest first) and the results shared: every rank returns the same dict. At 8B a checkpoint is ~100 GB,
    which one process hashes in minutes while the others wait in a barrier against NCCL's timeout. `with_size`:
    each value is (sha256, bytes), so a caller reporting a bad file need not touch it again."""
    def size(name):
        f = root / name
        return f.stat().st_size if f.is_file() else 0

    order = sorted(names, key=lambda n: (-size(n), n)) if not distributed(acc) or acc.is_main_process else None
    if distributed(acc):
        box = [order]
        torch.distributed.broadcast_object_list(box, src=0)
        order = box[0]
    rank, world = (acc.process_index, acc.num_processes) if distributed(acc) else (0, 1)
    def digest(f: Path):
        if not f.is_file():
            return None
        return (sha256_file(f), f.stat().st_size) if with_size else sha256_file(f)

    mine = {n: digest(root / n) for n in order[rank::world]}
    if not distributed(acc):
        return mine
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    return {k: v for p in parts for k, v in p.items()}


def files_under(root: Path) -> list[str]:
    """Every file below `root`, subfolders included (DeepSpeed writes its shards into pytorch_model/), as paths
    relative to it, sorted."""
    return sorted(f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file())


def planned_param_dtype(acc) -> torch.dtype:
    """The dtype the prepared model's parameters compute in: FSDP's MixedPrecisionPolicy.param_dtype, DeepSpeed's
    bf16/fp16 engine (it casts the module), else fp32 (one process and DDP keep fp32 weights; autocast only casts
    the matmuls' inputs)."""
    if acc is None:
        return torch.float32
    kind = acc.distributed_type.value
    if kind == "FSDP":
        policy = getattr(acc.state.fsdp_plugin, "mixed_precision_policy", None)
        return getattr(policy, "param_dtype", None) or torch.float32
    if kind == "DEEPSPEED":
        dsc = acc.state.deepspeed_plugin.deepspeed_config
        if str(dsc.get("bf16", {}).get("enabled", False)).lower() == "true":
            return torch.bfloat16
        if str(dsc.get("fp16", {}).get("enabled", False)).lower() == "true":
            return torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_launch_precision(acc, precision: str, recipe_precision: str) -> None:
    """accelerate applies the launch config's `mixed_precision` (autocast; FSDP and DeepSpeed cast the weights) on
    top of the recipe: a disagreement would train in a precision train_config.json does not record. Refuse it."""
    launch = getattr(acc, "mixed_precision", "no") if acc is not None else "no"
    if launch in (None, "no") or launch == precision:
        return
    raise ConfigError(f"the accelerate launch config has mixed_precision: {launch} but train.precision is "
                      f"{recipe_precision} (resolved: {precision} here); they must agree, or accelerate would "
                      f"silently train in {launch}: set train.precision=bf16 "
                      "(bf16 is the only reduced precision deltalearn trains in), or launch with mixed_precision: no "
                      "(e.g. --mixed_precision no, or configs/accelerate/*_cpu.yaml)")


@contextlib.contextmanager
def outside_zero3():
    """Load a model whole while a ZeRO-3 `HfDeepSpeedConfig` is alive: transformers checks a global weak reference
    to decide whether to build under `deepspeed.zero.Init`; unset it for the block and restore it after."""
    try:
        from transformers.integrations import deepspeed as hf_ds
    except ImportError:  # no transformers integration: nothing partitions
        yield
        return
    ref = hf_ds._hf_deepspeed_config_weak_ref
    alive = ref() if ref is not None else None
    if alive is None:
        yield
        return
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds.set_hf_deepspeed_config(alive)
