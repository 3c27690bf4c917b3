"""bf16 against fp32, step by step: the benchmark job of bench_train.py for 32 optimizer steps (4 epochs over its
64 shipped pairs, pairs in file order), trained three ways -- fp32, bf16 eager, bf16 with the decoder layers
compiled -- and the per-step DPO losses side by side (issue 19's "numerics" goal).

    python benchmarks/bench_numerics.py                  # 32 steps each (tens of minutes on 2 cores)
    python benchmarks/bench_numerics.py --epochs 1       # 8 steps each

bf16 here is what `precision: bf16` trains with (autocast, fp32 master weights); on a CPU without AMX or
AVX512-BF16 it is emulated and ~100x slower, so this script is for native-bf16 machines. Each configuration runs
in its own interpreter (as in bench_train.py), one after the other; the table is printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402

CONFIGS = {"fp32": ("fp32", False), "bf16-eager": ("bf16", False), "bf16-compiled": ("bf16", True)}


def child(name: str, epochs: int, out: str) -> None:
    import torch

    torch.set_num_threads(bench_train.THREADS)
    precision, compiled = CONFIGS[name]
    r = bench_train.run_deltalearn(precision, bench_train.DATA, 64, compile=compiled, epochs=epochs)
    Path(out).write_text(json.dumps({"losses": r["losses"], "compiled": r["compiled"], "precision": r["precision"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4, help="epochs over the 64 pairs (8 steps each)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {', '.join(CONFIGS)}")
    ap.add_argument("--out", help="also write the losses and the summary here (JSON)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.epochs, args.result)
    import torch

    from deltalearn.precision import cpu_has_native_bf16

    if not torch.cuda.is_available() and not cpu_has_native_bf16():
        print("bench_numerics: this CPU has no native bf16 (no AMX / AVX512-BF16): bf16 would be emulated, ~100x "
              "slower; skipped", file=sys.stderr)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(bench_train.THREADS), "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    runs = {}
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"--configs: unknown {name!r}; choose from {', '.join(CONFIGS)}")
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            result = f.name
        subprocess.run([sys.executable, __file__, "--child", name, "--epochs", str(args.epochs), "--result", result],
                       env=env, check=True)
        runs[name] = json.loads(Path(result).read_text())
        os.unlink(result)
        print(f"{name}: {len(runs[name]['losses'])} steps, compiled={runs[name]['compiled']}", file=sys.stderr)
    names = list(runs)
    ref = runs[names[0]]["losses"]
    print("| step | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for i in range(len(ref)):
        print(f"| {i + 1} | " + " | ".join(f"{runs[n]['losses'][i]:.4f}" for n in names) + " |")
    summary = {}
    for n in names[1:]:
        d = [abs(a - b) for a, b in zip(runs[n]["losses"], ref)]
        summary[n] = {"max_abs_diff_vs_" + names[0]: max(d), "mean_abs_diff_vs_" + names[0]: sum(d) / len(d),
                      "step_of_max": d.index(max(d)) + 1}
        print(f"{n} vs {names[0]}: max |diff| {max(d):.4f} (step {d.index(max(d)) + 1}), mean {sum(d) / len(d):.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"epochs": args.epochs, "runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
