"""Training speed and memory, side by side with TRL: one DPO job, eight ways by default, in one sitting.

    python benchmarks/bench_train.py                 # the full benchmark: 64 pairs, 8 configurations, ~32 min
    python benchmarks/bench_train.py --pairs 16 --bf16-pairs 8 --configs dl-fp32,trl   # a quick check
    python benchmarks/bench_train.py --pairs 32 \
        --configs trl,dl-fp32,dl-fp32-packed,dl-fp32-shared,dl-fp32-packed-shared   # the packing levers, fp32

The job (issue 2's "Speed and memory" and issue 8): SmolLM2-135M-Instruct, 64 preference pairs of ~200-token
responses, DPO (sigmoid, beta 0.1, summed log-probs), batch 4 x gradient accumulation 2, max length 512, fp32,
2 threads, one epoch, constant learning rate, AdamW (0.9, 0.999), grad clip 1, pairs in file order (no shuffle:
TRL gets a sequential sampler) so that both libraries see the same micro-batches and their per-step losses can be
compared. The 64 pairs are shipped in benchmarks/data/train_pairs.jsonl (real prompts of the sections experiment;
chosen and rejected are distinct ~200-token passages of real English prose; see `build_pairs`).

Configurations, each in its own subprocess (peak RSS is that child's `ru_maxrss`, read with os.wait4):
- dl-fp32    deltalearn, precision=fp32, cold reference cache: the reference pass is timed inside end-to-end.
- dl-gc      dl-fp32 with gradient checkpointing, TRL's default memory setting (recompute for memory).
- dl-auto    deltalearn, precision=auto (bf16 autocast on native-bf16 hardware, else fp32), cold cache.
- dl-bf16    deltalearn, precision=bf16 forced. On CPUs without AMX / AVX512-BF16 bf16 is emulated and very slow,
             so it (and every bf16 configuration) runs on the first --bf16-pairs pairs only (the table says how many).
- dl-bf16-eager / dl-bf16-compiled   bf16 with `compile: false` / `compile: true` (the lever alone).
- dl-bf16-gc bf16 with gradient checkpointing (the memory configuration).
- dl-fp32-packed / dl-fp32-shared / dl-fp32-packed-shared   dl-fp32 with `padding_free`, `share_prompt`, or both
             (the levers of packing.py); dl-bf16-packed / -shared / -packed-shared the same on dl-bf16.
- trl        TRL DPOTrainer defaults: a live reference model scored on every micro-batch.
- trl-pre    TRL DPOTrainer with precompute_ref_log_probs=True (its reference pass is timed inside end-to-end).
- trl-bf16   TRL DPOTrainer with bf16=True.

These VMs' matmul rate moves by up to 2x over minutes (the bf16 one on the Intel AMX machines jumps between ~700
and ~1,300-1,700 GFLOP/s), so a short matmul probe runs right before each configuration and the table shows it, with
each configuration's MFU against its own probe beside the MFU against the run's first one.

End-to-end tokens/s = (prompt+response tokens of both sides of every pair, counted once with deltalearn's
tokenization, identical for every configuration) / (reference pass + training loop seconds); model loading and
tokenization are outside it. These are the real tokens, as TRL counts them: no padding, the prompt once per sequence
(prompt + chosen and prompt + rejected), so a lever that skips padding or the second prompt is not credited for the
tokens it skips, only for the time it saves; the same holds for the per-step `tokens` of deltalearn's metrics.
Model FLOPs = 6 N T for training plus 2 N T for the reference forward (N = parameters taking part in matrix products,
the tied LM head included; T = those tokens), the same for every configuration, so MFU = achieved FLOP/s over the
matrix-product rate of this machine measured in this run (2048^2 matmuls of fp32 and of bf16 operands, on the same
threads).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
LEVERS = {"packed": dict(padding_free=True), "shared": dict(share_prompt=True),
          "packed-shared": dict(padding_free=True, share_prompt=True)}
CONFIGS = ("dl-fp32", "dl-gc", "dl-auto", "dl-bf16", "dl-bf16-eager", "dl-bf16-compiled", "dl-bf16-gc", "trl",
           "trl-bf16", "trl-pre", *(f"dl-{p}-{lever}" for p in ("fp32", "bf16") for lever in LEVERS))
BF16_CONFIGS = ("dl-bf16", "dl-bf16-eager", "dl-bf16-compiled", "dl-bf16-gc", "trl-bf16",
                *(f"dl-bf16-{lever}" for lever in LEVERS))
# the README's run: each library's bf16 and fp32 side by side (dl-bf16 / dl-bf16-eager repeat dl-auto on native-bf16
# CPUs and stay selectable with --configs)
DEFAULT_CONFIGS = ("trl-bf16", "dl-auto", "dl-bf16-compiled", "dl-bf16-gc", "trl", "dl-fp32", "dl-gc", "trl-pre")
MODEL = os.environ.get("BENCH_MODEL", "smollm2-135m")  # a folder here gives a quick check of the script itself
MATMUL_SECONDS = float(os.environ.get("BENCH_MATMUL_SECONDS", 2.0))
JOB = dict(beta=0.1, lr=1e-5, batch=4, accum=2, max_len=512, seed=0)


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------------------
# Data: shipped with the benchmark
# ---------------------------------------------------------------------------------------------------------


DATA = Path(__file__).resolve().parent / "data" / "train_pairs.jsonl"
LICENSES = ("GPL-3", "GPL-2", "LGPL-2.1", "MPL-2.0", "GFDL-1.3", "Apache-2.0", "MPL-1.1")


def build_pairs(out: Path = DATA, n_pairs: int = 64, words: int = 160) -> Path:
    """How benchmarks/data/train_pairs.jsonl was made (it is shipped, so every machine benchmarks the same data):
    the first 64 train prompts of the sections experiment; chosen and rejected are consecutive, distinct 160-word
    passages of the Debian license texts (real English prose, ~200 SmolLM2 tokens each)."""
    import re
    from importlib import resources

    text = " ".join(Path("/usr/share/common-licenses", n).read_text() for n in LICENSES)
    tokens = re.sub(r"\s+", " ", text).strip().split(" ")
    chunks = [" ".join(tokens[i:i + words]) for i in range(0, len(tokens) - words, words)]
    src = resources.files("deltalearn") / "data" / "sections_prompts.jsonl"
    prompts = [json.loads(ln) for ln in src.read_text().splitlines() if ln.strip()]
    prompts = [p for p in prompts if p.get("split") == "train"][:n_pairs]
    rows = [{"id": p["id"], "prompt": [{"role": "user", "content": p["prompt"]}],
             "chosen": [{"role": "assistant", "content": chunks[2 * i]}],
             "rejected": [{"role": "assistant", "content": chunks[2 * i + 1]}]} for i, p in enumerate(prompts)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def workload(path: Path, n_pairs: int) -> dict:
    """Token counts of the job under deltalearn's tokenization (the numerator of every tokens/s)."""
    from deltalearn.models import load_tokenizer
    from deltalearn.tokenize import encode_pairs

    rows = [json.loads(ln) for ln in path.read_text().splitlines()][:n_pairs]
    enc, _, stats = encode_pairs(load_tokenizer(MODEL), rows, max_len=JOB["max_len"])
    resp = [len(e.chosen) for e in enc] + [len(e.rejected) for e in enc]
    return {"pairs": len(enc), "tokens": sum(2 * len(e.prompt) + len(e.chosen) + len(e.rejected) for e in enc),
            "response_tokens_mean": sum(resp) / len(resp), "prompt_tokens_mean": sum(len(e.prompt) for e in enc)
            / len(enc), "truncated_pairs": stats.truncated_pairs}


# ---------------------------------------------------------------------------------------------------------
# Children: one configuration each
# ---------------------------------------------------------------------------------------------------------


def matmul_rates() -> dict:
    """GFLOP/s of square matmuls on THREADS threads: fp32 (2048) and bf16 autocast (1024, it can be very slow)."""
    import torch

    def rate(n: int, dtype, min_s: float = MATMUL_SECONDS) -> float:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up (oneDNN primitive creation)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_s or reps < 2:
            a @ b
            reps += 1
        return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9

    from deltalearn.precision import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    # bf16 operands already in bf16 (the hardware's rate, no casts); emulated bf16 is ~100x slower: a small size
    return {"fp32_gflops": rate(2048, torch.float32), "bf16_gflops": rate(2048 if native else 512, torch.bfloat16),
            "native_bf16": native}


def matmul_params() -> int:
    """Parameters that take part in matrix products: everything but the input embedding, plus the LM head (tied
    to the embedding in SmolLM2, so it is counted once here as the head)."""
    from deltalearn.models import load_model

    m, _ = load_model(MODEL, with_tokenizer=False)
    emb = m.get_input_embeddings().weight
    head = m.get_output_embeddings().weight
    n = sum(p.numel() for p in m.parameters())
    return n if head.data_ptr() == emb.data_ptr() else n - emb.numel()


def dl_settings(name: str) -> dict:
    """run_deltalearn's settings of a dl-* configuration."""
    base, lever = name, {}
    for suffix, switches in sorted(LEVERS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith("-" + suffix):
            base, lever = name[: -len(suffix) - 1], switches
            break
    precision = "fp32" if base in ("dl-fp32", "dl-gc") else "auto" if base == "dl-auto" else "bf16"
    return dict(precision=precision, checkpointing=base in ("dl-gc", "dl-bf16-gc"),
                compile={"dl-bf16-eager": False, "dl-bf16-compiled": True}.get(base, "auto"), **lever)


def run_deltalearn(precision: str, path: Path, n_pairs: int, checkpointing: bool = False,
                   compile: bool | str = "auto", epochs: int = 1, padding_free: bool = False,
                   share_prompt: bool = False) -> dict:
    from deltalearn.recipe import TrainConfig
    from deltalearn.train import train

    rows = [json.loads(ln) for ln in path.read_text().splitlines()][:n_pairs]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=MODEL, loss="dpo", beta=JOB["beta"], lr=JOB["lr"], min_lr_ratio=1.0,
                          warmup_ratio=0.0, adam_betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1.0,
                          batch_size=JOB["batch"] * JOB["accum"], micro_batch_size=JOB["batch"],
                          max_len=JOB["max_len"], precision=precision, shuffle=False, seed=JOB["seed"],
                          gradient_checkpointing=checkpointing, compile=compile, epochs=epochs,
                          padding_free=padding_free, share_prompt=share_prompt,
                          ref_cache_dir=str(Path(tmp) / "refcache"))  # cold cache: the reference pass is timed
        s = train(cfg, rows, Path(tmp) / "run", progress=False)
        steps = [json.loads(ln) for ln in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    # steps after the first: the first one holds the compilation when the layers are compiled
    later = steps[1:]
    return {"ref_s": s["ref_s"], "train_s": s["train_s"], "losses": [r["loss"] for r in steps],
            "precision": s["precision"], "compiled": s["compiled"],
            "later_steps_tokens_per_s": sum(r["tokens"] for r in later) / max(sum(r["step_s"] for r in later), 1e-9)}


def run_trl(precompute: bool, path: Path, n_pairs: int, bf16: bool = False) -> dict:
    import datasets
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from deltalearn.models import local_folder

    class InOrderDPOTrainer(DPOTrainer):
        """Pairs in file order, like deltalearn with shuffle=False, so per-step losses can be compared."""

        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    timings = {"ref_s": 0.0}
    original = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **k):
        t = time.perf_counter()
        out = original(self, *a, **k)
        timings["ref_s"] += time.perf_counter() - t
        return out

    DPOTrainer._precompute_ref_logps = timed_precompute
    folder = local_folder(MODEL)
    rows = [json.loads(ln) for ln in path.read_text().splitlines()][:n_pairs]
    ds = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, per_device_train_batch_size=JOB["batch"],
                         gradient_accumulation_steps=JOB["accum"], max_length=JOB["max_len"],
                         learning_rate=JOB["lr"], lr_scheduler_type="constant", warmup_steps=0,
                         adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0, max_grad_norm=1.0,
                         num_train_epochs=1, beta=JOB["beta"], loss_type=["sigmoid"], seed=JOB["seed"],
                         precompute_ref_log_probs=precompute, use_cpu=True, bf16=bf16, fp16=False,
                         logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                         dataloader_num_workers=0)
        trainer = InOrderDPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints a dict per logging step
            trainer.train()
        train_s = time.perf_counter() - t
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"ref_s": timings["ref_s"], "train_s": train_s, "losses": losses, "precision": "bf16" if bf16 else "fp32"}


def child(args) -> None:
    import torch

    torch.set_num_threads(THREADS)
    path = Path(args.data)
    if args.child == "matmul":
        result = matmul_rates()
    elif args.child == "params":
        result = {"params": matmul_params()}
    elif args.child.startswith("dl-"):
        result = run_deltalearn(path=path, n_pairs=args.pairs, **dl_settings(args.child))
    else:
        result = run_trl(args.child == "trl-pre", path, args.pairs, bf16=args.child == "trl-bf16")
    Path(args.result).write_text(json.dumps(result))


def spawn(name: str, data: Path, n_pairs: int) -> dict:
    """Run one configuration in a fresh interpreter; returns its result plus peak RSS and wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
           "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", name, "--data", str(data), "--pairs",
                             str(n_pairs), "--result", result_path], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"configuration {name} failed (exit {os.waitstatus_to_exitcode(status)})")
    out = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    # Linux reports ru_maxrss in KiB (macOS: bytes)
    out["peak_rss_gb"] = usage.ru_maxrss * (1 if platform.system() == "Darwin" else 1024) / 1e9
    out["process_wall_s"] = wall
    out["load_after"] = _load()
    return out


# ---------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------


RESULT_FIELDS = ("precision", "pairs", "ref_s", "train_s", "e2e_s", "tokens_per_s", "flops", "peak_rss_gb", "probe",
                 "load_after", "losses")


def load_saved(path: Path) -> tuple[dict, dict]:
    """(results, matmul) of a run saved with BENCH_OUT; an unreadable or incomplete file is refused naming the
    file, the configuration and the field."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"--from-json {path}: no such file")
    except json.JSONDecodeError as e:
        raise SystemExit(f"--from-json {path}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})")
    for key in ("results", "matmul"):
        if not isinstance(saved, dict) or not isinstance(saved.get(key), dict):
            raise SystemExit(f"--from-json {path}: no '{key}' mapping (not a file that BENCH_OUT wrote)")
    for name, r in saved["results"].items():
        missing = [f for f in RESULT_FIELDS if f not in r]
        if missing:
            raise SystemExit(f"--from-json {path}: results.{name} has no {', '.join(missing)} (saved by an older "
                             "bench_train.py?)")
    return saved["results"], saved["matmul"]


def report(results: dict, mm: dict) -> None:
    """The results table, the ratios to TRL and the per-step losses (also from a saved run: --from-json)."""
    print("   x TRL: against TRL at the same precision (trl-bf16 for bf16 runs, trl for fp32); x TRL RSS: against "
          "TRL's default (trl); MFU: of the matmul rate of the run's precision, from the first probe / from the "
          "probe just before the configuration")
    head = (f"| {'configuration':<21} | precision | pairs | ref s | train s | tokens/s | x TRL | later steps tokens/s "
            f"| peak RSS GB | x TRL RSS | probe GFLOP/s | MFU | MFU (own probe) | load after |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    rss_base = results.get("trl")
    for name, r in results.items():
        key = f"{r['precision']}_gflops"
        achieved = r["flops"] / r["e2e_s"] / 1e9
        base = results.get("trl-bf16" if r["precision"] == "bf16" else "trl")
        x_tps = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
        x_rss = f"{r['peak_rss_gb'] / rss_base['peak_rss_gb']:.2f}" if rss_base else "-"
        later = f"{r['later_steps_tokens_per_s']:.1f}" if "later_steps_tokens_per_s" in r else "-"
        print(f"| {name:<21} | {r['precision']:<9} | {r['pairs']:>5} | {r['ref_s']:>5.1f} | {r['train_s']:>7.1f} | "
              f"{r['tokens_per_s']:>8.1f} | {x_tps:>5} | {later:>20} | {r['peak_rss_gb']:>11.2f} | {x_rss:>9} | "
              f"{r['probe'][key]:>13.0f} | {achieved / mm[key]:>3.0%} | {achieved / r['probe'][key]:>15.0%} | "
              f"{r['load_after']:>10} |")
    if "trl-pre" in results:
        pre = results["trl-pre"]
        for name in ("dl-fp32", "dl-gc"):
            if name in results:
                print(f"   {name} vs TRL precomputed: {results[name]['tokens_per_s'] / pre['tokens_per_s']:.2f}x "
                      f"tokens/s, {results[name]['peak_rss_gb'] / pre['peak_rss_gb']:.2f}x peak RSS")

    # Numerics: the same data in the same order, so step k's loss is comparable across configurations.
    ref_name = "dl-fp32" if "dl-fp32" in results else None
    if ref_name:
        ref = results[ref_name]["losses"]
        print(f"\n== Per-step losses (step 1 is log 2 = 0.6931 for all: policy == reference)")
        for name, r in results.items():
            if name == ref_name:
                continue
            k = min(len(ref), len(r["losses"]))
            rel = [abs(a - b) / abs(b) for a, b in zip(r["losses"][:k], ref[:k])]
            print(f"   {name:<8} vs {ref_name}: max relative difference over {k} steps {max(rel):.2%}; "
                  f"per step {[round(x, 4) for x in r['losses'][:k]]} vs {[round(x, 4) for x in ref[:k]]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--bf16-pairs", type=int, default=None,
                    help="pairs for dl-bf16 (default: all on native-bf16 hardware, else 16 = 2 optimizer steps, "
                    "since emulated bf16 is several times slower)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated subset of {', '.join(CONFIGS)} (default: {','.join(DEFAULT_CONFIGS)})")
    ap.add_argument("--from-json", help="print the tables of a run saved with BENCH_OUT=... instead of running")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.from_json:
        return report(*load_saved(Path(args.from_json)))
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, also through a pipe
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    import torch
    import transformers
    import trl

    print(f"== bench_train ({MODEL}): load average at start {_load()} (1/5/15 min), cores visible {os.cpu_count()}, "
          f"threads {THREADS}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"trl {trl.__version__}")
    if os.getloadavg()[0] > 1.5:
        print("   WARNING: the machine is busy (1-min load > 1.5); timings below are not idle-machine numbers")
    t_all = time.time()
    data = DATA
    if args.pairs > sum(1 for _ in data.open()):
        ap.error(f"--pairs {args.pairs}: {data} has fewer pairs")
    w = workload(data, args.pairs)
    mm = spawn("matmul", data, 0)
    n_params = spawn("params", data, 0)["params"]
    bf16_pairs = args.bf16_pairs or (args.pairs if mm["native_bf16"] else min(16, args.pairs))
    print(f"   data {data}: {w['pairs']} pairs, prompt {w['prompt_tokens_mean']:.0f} and response "
          f"{w['response_tokens_mean']:.0f} tokens on average, {w['tokens']} tokens per epoch "
          f"({w['truncated_pairs']} pairs truncated at {JOB['max_len']})")
    print(f"   matmul rate on {THREADS} threads: fp32 {mm['fp32_gflops']:.0f} GFLOP/s, bf16 autocast "
          f"{mm['bf16_gflops']:.1f} GFLOP/s (native bf16: {mm['native_bf16']}); matmul parameters "
          f"{n_params / 1e6:.1f}M")

    results = {}
    for name in configs:
        n = bf16_pairs if name in BF16_CONFIGS else args.pairs
        wl = w if n == args.pairs else workload(data, n)
        probe = spawn("matmul", data, 0)
        print(f"-- {name} ({n} pairs) ... load {_load()}; matmul probe fp32 {probe['fp32_gflops']:.0f}, bf16 "
              f"{probe['bf16_gflops']:.0f} GFLOP/s", flush=True)
        r = spawn(name, data, n)
        r["probe"] = probe
        r["pairs"], r["tokens"] = n, wl["tokens"]
        r["e2e_s"] = r["ref_s"] + r["train_s"]
        r["tokens_per_s"] = wl["tokens"] / r["e2e_s"]
        r["flops"] = 8 * n_params * wl["tokens"]  # 6NT training + 2NT reference forward
        results[name] = r
        later = (f", training steps after the first {r['later_steps_tokens_per_s']:.1f} tokens/s"
                 if "later_steps_tokens_per_s" in r else "")
        print(f"   {name}: {r['tokens_per_s']:.1f} tokens/s end to end (ref {r['ref_s']:.1f} s + train "
              f"{r['train_s']:.1f} s{later}), peak RSS {r['peak_rss_gb']:.2f} GB, compiled "
              f"{r.get('compiled', False)}, losses {[round(x, 4) for x in r['losses']]}", flush=True)

    print(f"\n== Results: {MODEL} DPO, batch {JOB['batch']} x {JOB['accum']}, max_len {JOB['max_len']}, "
          f"{THREADS} threads; load average at end {_load()}")
    report(results, mm)
    print(f"\n== bench_train done in {time.time() - t_all:.0f} s; load average at end {_load()}")
    out = Path(os.environ.get("BENCH_OUT", "")) if os.environ.get("BENCH_OUT") else None
    if out:
        out.write_text(json.dumps({"job": JOB, "workload": w, "matmul": mm, "results": results}, indent=1))


if __name__ == "__main__":
    main()
