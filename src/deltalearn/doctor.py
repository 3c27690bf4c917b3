"""`deltalearn doctor`: what this machine and install can do — versions, device, threads, bf16, extras, models."""

from __future__ import annotations

import importlib.util
import os

from deltalearn.manifest import git_revision, versions

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    """The CPU's model name and the flags that decide bf16 speed, from /proc/cpuinfo (Linux; empty elsewhere)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "flags": {name: name in flags for name in CPU_FLAGS}}


def machine_kind(flags: dict) -> str:
    """The three CPU kinds this project has met: their bf16 matmul speed differs by ~100x."""
    if flags.get("amx_bf16"):
        return "AMX (native bf16)"
    if flags.get("avx512_bf16"):
        return "AVX512-BF16 (native bf16)"
    return "AVX2 only (bf16 emulated)" if flags.get("avx2") else "no AVX2"


EXTRAS = {"gguf": "gguf", "peft": "peft", "vllm": "vllm", "deepspeed": "deepspeed", "eval": "lm_eval", "trl (dev)": "trl"}


def report() -> dict:
    import torch

    from deltalearn.precision import NATIVE_BF16_ENV, cpu_has_native_bf16, cpu_probe_native_bf16, use_bf16

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    info = {
        "versions": versions(),
        "git": git_revision(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_info(),
        "cpu_native_bf16_probe": cpu_probe_native_bf16(),
        "native_bf16_override": os.environ.get(NATIVE_BF16_ENV),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "precision_auto": "bf16" if use_bf16("auto", device) else "fp32",
        "extras": {name: importlib.util.find_spec(mod) is not None for name, mod in EXTRAS.items()},
    }
    try:
        from deltalearn.models import embedded_gguf_path

        info["embedded_smollm2"] = str(embedded_gguf_path("smollm2-135m"))
    except Exception as e:  # noqa: BLE001 - reported, not raised
        info["embedded_smollm2"] = f"missing: {e}"
    return info


def add_cli_args(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def run_cli(args) -> int:
    info = report()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    v = info["versions"]
    print(f"deltalearn {v['deltalearn']}  (git {info['git'] or 'n/a'})  python {v['python']}")
    print("packages: " + ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "accelerate", "datasets")))
    print(f"device: {info['device']}  cuda devices: {info['cuda_devices']}  cpus: {info['cpu_count']}  "
          f"torch threads: {info['torch_threads']}")
    cpu = info["cpu"]
    print(f"cpu: {cpu['model']}  kind: {machine_kind(cpu['flags'])}  flags: "
          + " ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu["flags"].items()))
    forced = info["native_bf16_override"]
    print(f"native bf16 on CPU: {info['cpu_native_bf16']}"
          + (f" (forced by DELTALEARN_NATIVE_BF16={forced}; the CPU says {info['cpu_native_bf16_probe']})"
             if forced not in (None, "") else "")
          + f"  -> precision 'auto' means {info['precision_auto']}")
    print("extras: " + ", ".join(f"{k} {'yes' if ok else 'no'}" for k, ok in info["extras"].items()))
    print(f"embedded model smollm2-135m: {info['embedded_smollm2']}")
    return 0
