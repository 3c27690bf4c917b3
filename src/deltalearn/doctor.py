"""`deltalearn doctor`: what this machine and install can do — versions, device, threads, bf16, extras, models."""

from __future__ import annotations

import importlib.util
import os

from deltalearn.manifest import git_revision, versions

EXTRAS = {"gguf": "gguf", "peft": "peft", "vllm": "vllm", "deepspeed": "deepspeed", "eval": "lm_eval", "trl (dev)": "trl"}


def report() -> dict:
    import torch

    from deltalearn.precision import cpu_has_native_bf16, use_bf16

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    info = {
        "versions": versions(),
        "git": git_revision(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
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
    print(f"native bf16 on CPU: {info['cpu_native_bf16']}  -> precision 'auto' means {info['precision_auto']}")
    print("extras: " + ", ".join(f"{k} {'yes' if ok else 'no'}" for k, ok in info["extras"].items()))
    print(f"embedded model smollm2-135m: {info['embedded_smollm2']}")
    return 0
