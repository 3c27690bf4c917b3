"""One command for the day a GPU is lent: is deltalearn's training correct and fast on it? Prints one table.

    python benchmarks/gpu_check.py             # one H100/H200: < 8 minutes, torch + transformers only, no network
    python benchmarks/gpu_check.py --dry-run   # CPU, tiny model: checks the script itself (run by the tests)

Rows:
1. bf16 DPO through deltalearn's `train()` on a ~1B config-built Llama (bench_gpu.py's model, tokenizer and data):
   step-1 loss against ln 2, tokens/s, and MFU twice: against the GPU's datasheet bf16 dense peak, and against the
   bf16 matmul rate measured here (8192^2 products). Model FLOPs: 6 N T training + 2 N T reference forward.
2. The same job again with another beta: the reference comes from the cache written by row 1 (hit), step 1 = ln 2.
3. If torch.distributed works here, a 1-process `accelerate launch` of configs/accelerate/fsdp.yaml (FSDP2 with its
   bf16 MixedPrecisionPolicy): step-1 loss and the engine's param_dtype (the reference is scored through the
   prepared module, so step 1 must be ln 2 here too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from bench_gpu import LLAMA_1B, TINY, build_model_dir, matmul_params, matmul_rate, synthetic_pairs  # noqa: E402

# NVIDIA datasheet bf16 dense tensor-core peaks (TFLOP/s; the "with sparsity" figures are twice these)
DATASHEET_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.0, "A100": 312.0,
                         "L40S": 362.0, "A10": 125.0}
FULL = dict(pairs=128, batch=32, micro=8, max_len=1024, prompt_words=16, response_words=150)
DRY = dict(pairs=8, batch=4, micro=2, max_len=128, prompt_words=4, response_words=12)


def datasheet_peak(name: str) -> tuple[str, float | None]:
    """(datasheet entry, TFLOP/s) for a CUDA device name such as 'NVIDIA H100 80GB HBM3'."""
    n = name.upper()
    if "H100" in n:
        key = "H100 NVL" if "NVL" in n else "H100 PCIe" if "PCIE" in n else "H100 SXM"
    else:
        key = next((k for k in DATASHEET_BF16_TFLOPS if k.upper() in n), None)
    return (key, DATASHEET_BF16_TFLOPS[key]) if key else (name, None)


def train_row(folder: Path, rows: list[dict], job: dict, work: Path, precision: str, beta: float, name: str) -> dict:
    from deltalearn.recipe import TrainConfig
    from deltalearn.train import train

    cfg = TrainConfig(model=str(folder), loss="dpo", beta=beta, lr=1e-5, warmup_ratio=0.0, min_lr_ratio=1.0,
                      batch_size=job["batch"], micro_batch_size=job["micro"], max_len=job["max_len"],
                      precision=precision, shuffle=False, ref_cache_dir=str(work / "refcache"))
    s = train(cfg, rows, work / name, progress=False)
    steps = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
    return {"summary": s, "step1": steps[0]["loss"], "tokens": sum(r["tokens"] for r in steps)}


def fsdp_row(folder: Path, rows: list[dict], job: dict, work: Path, dry: bool) -> dict | str:
    import torch

    if not torch.distributed.is_available():
        return "not run: torch.distributed is not available"
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = ROOT / "configs" / "accelerate" / ("fsdp_bf16_cpu.yaml" if dry else "fsdp.yaml")
    out = work / "fsdp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "1",
           "-m", "deltalearn.cli", "train", "--pairs", str(pairs), "--model", str(folder), "--out", str(out),
           "--no-progress", "--set", "train.loss=dpo", "--set", "train.precision=bf16", "--set", "train.max_steps=2",
           "--set", f"train.batch_size={job['batch']}", "--set", f"train.micro_batch_size={job['micro']}",
           "--set", f"train.max_len={job['max_len']}", "--set", f"train.ref_cache_dir={work / 'refcache-fsdp'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "failed: the launch ran past 300 s"
    if r.returncode != 0:
        return "failed: " + (r.stderr or r.stdout).strip().splitlines()[-1][:200]
    s = json.loads((out / "train_summary.json").read_text())
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return {"step1": first["loss"], "param_dtype": s["param_dtype"], "tokens_per_s": s["tokens_per_s"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny model on CPU: checks the script itself")
    ap.add_argument("--out", help="also write the result as JSON here")
    args = ap.parse_args(argv)
    import torch

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        ap.error("no CUDA GPU here; use --dry-run to check the script on CPU")
    device = torch.device("cpu" if dry else "cuda")
    shapes, job = (TINY, DRY) if dry else (LLAMA_1B, FULL)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)"
    entry, peak = datasheet_peak(name) if device.type == "cuda" else ("none (CPU)", None)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = build_model_dir(work / "model", shapes)
        rows = synthetic_pairs(job)
        n = matmul_params(folder)
        rate = matmul_rate(device, dry)
        precision = "fp32" if dry else "bf16"
        cold = train_row(folder, rows, job, work, precision, 0.1, "cold")
        warm = train_row(folder, rows, job, work, precision, 0.2, "warm")
        fsdp = fsdp_row(folder, rows, job, work, dry)
    s = cold["summary"]
    e2e = s["ref_s"] + s["train_s"]
    flops = 8 * n * cold["tokens"]  # 6 N T training + 2 N T reference forward (one epoch: each sequence once)
    result = {"device": name, "datasheet": entry, "datasheet_bf16_tflops": peak, "measured_matmul_tflops": rate / 1e12,
              "matmul_params": n, "job": job, "ln2": math.log(2),
              "rows": [
                  {"row": "train() bf16 DPO, cold reference cache" if not dry else "train() fp32 DPO (dry), cold cache",
                   "step1": cold["step1"], "ref_cache_hit": s.get("ref_cache_hit"), "param_dtype": s["param_dtype"],
                   "tokens_per_s": cold["tokens"] / e2e,
                   "mfu_datasheet": flops / e2e / (peak * 1e12) if peak else None,
                   "mfu_measured_matmul": flops / e2e / rate},
                  {"row": "same job, reference from the cache", "step1": warm["step1"],
                   "ref_cache_hit": warm["summary"].get("ref_cache_hit"), "param_dtype": warm["summary"]["param_dtype"],
                   "tokens_per_s": warm["summary"]["tokens_per_s"]},
                  {"row": "accelerate launch FSDP2 bf16, 1 process", **(fsdp if isinstance(fsdp, dict)
                                                                         else {"note": fsdp})},
              ], "wall_s": time.time() - t0}
    print(table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def table(r: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"device: {r['device']}; datasheet bf16 peak: {f(r['datasheet_bf16_tflops'], '.0f')} TFLOP/s "
             f"({r['datasheet']}); measured bf16 matmul: {r['measured_matmul_tflops']:.1f} TFLOP/s; "
             f"{r['matmul_params'] / 1e9:.2f}B matmul parameters; ln 2 = {r['ln2']:.6f}",
             "| check | step-1 loss | - ln 2 | cache hit | param dtype | tokens/s | MFU datasheet | MFU measured |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if "note" in row:
            lines.append(f"| {row['row']} | {row['note']} | | | | | | |")
            continue
        lines.append(f"| {row['row']} | {row['step1']:.6f} | {row['step1'] - r['ln2']:+.1e} | "
                     f"{row.get('ref_cache_hit', '-')} | {row.get('param_dtype', '-')} | "
                     f"{f(row.get('tokens_per_s'), ',.0f')} | {f(row.get('mfu_datasheet'), '.1%')} | "
                     f"{f(row.get('mfu_measured_matmul'), '.1%')} |")
    lines.append(f"wall time {r['wall_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
