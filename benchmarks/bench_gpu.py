"""DPO throughput and MFU of deltalearn on one GPU: a random-init ~1B Llama built from a config (nothing downloaded).

    python benchmarks/bench_gpu.py                # on a CUDA GPU, one command, a few minutes (issue 19)
    python benchmarks/bench_gpu.py --dry-run      # on CPU: a tiny config through the same code (run by the tests)
    python benchmarks/bench_gpu.py --out result.json
    python benchmarks/bench_gpu.py --configs padded,packed,packed-shared --no-trl   # the packing rows only

The job: Llama-3.2-1B's shapes (hidden 2048, 16 layers, MLP 8192, 32 heads / 8 KV heads, vocab 128256, tied head;
1.24B parameters), random weights; a character-level tokenizer with a ChatML template (made here, so no hub); pairs of
synthetic English-like text, prompt ~96 and responses ~900 tokens; DPO (sigmoid, beta 0.1), batch 32 = micro 8 x 4,
max_len 1024, `precision: auto` (bf16 autocast, fp32 master weights), `compile: auto`, the reference scored once and
cached (a cold cache: its pass is inside the end-to-end time). This is deltalearn's own `train()`, as `deltalearn
train` runs it.

Rows (`--configs`, default all three): `padded` (right-padded micro-batches), `packed` (`train.padding_free`:
flash-attention varlen when flash-attn 2/3 is installed, else deltalearn's block attention over SDPA) and
`packed-shared` (`padding_free` + `share_prompt`: each pair's prompt computed once). Every row's tokens/s and MFU use
the same real token count (prompt + chosen and prompt + rejected, no padding), so a lever is credited only for the
time it saves. MFU is given against the measured matmul rate and against the GPU's datasheet dense bf16 peak
(`DATASHEET_BF16_TFLOPS`, or --peak-tflops).

Reported: tokens/s end to end (reference pass + training) and in the training steps after the first (the first holds
the compilation); MFU = model FLOPs / time / the bf16 matmul rate measured here on 8192^2 products (model FLOPs:
6 N T for training, 2 N T for the reference forward, N = parameters in matrix products with the tied head counted
once, T = the job's tokens); peak GPU memory. TRL's DPOTrainer on the same job runs too when `trl` and `datasets`
import there (the GPU image of this project's workplace has neither; it says so).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout without an install (the GPU machine has none)

LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096, tie_word_embeddings=True,
                rope_theta=500000.0)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True)
ROWS = {"padded": {}, "packed": dict(padding_free=True), "packed-shared": dict(padding_free=True, share_prompt=True)}
# dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, no sparsity); the first name found in the device's
# name wins, so the more specific names come first
DATASHEET_BF16_TFLOPS = (("GH200", 989.4), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
                         ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0))
FULL_JOB = dict(pairs=256, batch=32, micro=8, max_len=1024, prompt_words=16, response_words=150)
DRY_JOB = dict(pairs=8, batch=4, micro=2, max_len=128, prompt_words=4, response_words=12)

CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ("the of and to in is was for on that with as by at from his her it an are were which this be or has had "
         "not but one all new first after two time who into more other also can their some only over most years "
         "such these made many state than then when used well where them between both three city known world "
         "during under while since later part number each high people early before around second through").split()


def build_tokenizer():
    """A character-level fast tokenizer (every printable ASCII character one token) with a ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"<\|im_start\|>|<\|im_end\|>|[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>", eos_token="<|im_end|>",
                                  unk_token="<|unk|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model_dir(folder: Path, shapes: dict) -> Path:
    """Random-init Llama from `shapes`, saved with the tokenizer as an ordinary model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = build_tokenizer()
    cfg = LlamaConfig(**shapes, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def synthetic_pairs(job: dict, seed: int = 0) -> list[dict]:
    """Chosen and rejected are different word sequences of the same length, so both sides cost the same."""
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    def msg(role: str, content: str) -> list[dict]:
        return [{"role": role, "content": content}]

    return [{"prompt": msg("user", text(job["prompt_words"])), "chosen": msg("assistant", text(job["response_words"])),
             "rejected": msg("assistant", text(job["response_words"]))} for _ in range(job["pairs"])]


def matmul_rate(device, dry: bool) -> float:
    """Dense bf16 matmul FLOP/s measured on `device` (8192^2); the dry run trains in fp32, so it measures fp32
    (512^2: on CPUs without native bf16, bf16 is emulated ~100x slower and every MFU would read above 100%)."""
    import torch

    n = 512 if dry else 8192
    dtype = torch.float32 if dry else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < (0.2 if dry else 2.0) or reps < 3:
        a @ b
        reps += 1
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def matmul_params(folder: Path) -> int:
    """Parameters in matrix products: all of them, the tied embedding counted once (as the LM head)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    n = sum(p.numel() for p in m.parameters())
    tied = m.get_input_embeddings().weight is m.get_output_embeddings().weight
    return n if tied else n - m.get_input_embeddings().weight.numel()


def datasheet_peak(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU from DATASHEET_BF16_TFLOPS, or None for one not listed."""
    return next((tf * 1e12 for name, tf in DATASHEET_BF16_TFLOPS if name in device_name), None)


def run_deltalearn(folder: Path, rows: list[dict], job: dict, work: Path, precision: str,
                   padding_free: bool = False, share_prompt: bool = False) -> dict:
    from deltalearn.recipe import TrainConfig
    from deltalearn.tokenize import encode_pairs
    from deltalearn.models import load_tokenizer
    from deltalearn.train import train

    enc, _, _ = encode_pairs(load_tokenizer(str(folder)), rows, max_len=job["max_len"])
    tokens = sum(2 * len(e.prompt) + len(e.chosen) + len(e.rejected) for e in enc)
    cfg = TrainConfig(model=str(folder), loss="dpo", beta=0.1, lr=1e-5, warmup_ratio=0.0, min_lr_ratio=1.0,
                      batch_size=job["batch"], micro_batch_size=job["micro"], max_len=job["max_len"],
                      precision=precision, shuffle=False, ref_cache_dir=str(work / "refcache"),
                      padding_free=padding_free, share_prompt=share_prompt)
    s = train(cfg, rows, work / "run", progress=False)
    steps = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    return {"tokens": tokens, "ref_s": s["ref_s"], "train_s": s["train_s"], "precision": s["precision"],
            "compiled": s["compiled"], "losses": [r["loss"] for r in steps],
            "steady_step_s": [r["step_s"] for r in steps[1:]], "steady_tokens": sum(r["tokens"] for r in steps[1:])}


def run_trl(folder: Path, rows: list[dict], job: dict, work: Path) -> dict | str:
    try:
        import datasets
        from trl import DPOConfig, DPOTrainer
    except ImportError as e:
        return f"not run: {e}"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    args = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=job["micro"],
                     gradient_accumulation_steps=job["batch"] // job["micro"], max_length=job["max_len"],
                     learning_rate=1e-5, lr_scheduler_type="constant", num_train_epochs=1, beta=0.1, bf16=True,
                     precompute_ref_log_probs=True, logging_steps=1, save_strategy="no", report_to="none",
                     disable_tqdm=True)
    ds = datasets.Dataset.from_list(rows)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(folder))
    t = time.perf_counter()
    trainer.train()
    return {"e2e_s": time.perf_counter() - t, "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}


def row_result(dl: dict, n: int, rate: float, peak: float | None, peak_gpu_gb: float | None) -> dict:
    """One configuration's numbers: tokens/s and MFU (model FLOPs of the real tokens: 6 N T training + 2 N T
    reference) against the measured matmul rate and the datasheet peak."""
    e2e = dl["ref_s"] + dl["train_s"]
    steady = sum(dl["steady_step_s"])
    flops = 8 * n * dl["tokens"]
    return {"tokens": dl["tokens"], "precision": dl["precision"], "compiled": dl["compiled"], "ref_s": dl["ref_s"],
            "train_s": dl["train_s"], "tokens_per_s": dl["tokens"] / e2e, "mfu_end_to_end": flops / e2e / rate,
            "mfu_datasheet": flops / e2e / peak if peak else None,
            "mfu_steady_training": (6 * n * dl["steady_tokens"] / steady / rate) if steady > 0 else None,
            "first_loss": dl["losses"][0], "losses": dl["losses"], "peak_gpu_gb": peak_gpu_gb}


def table(rows: dict) -> str:
    """The rows as the markdown table of benchmarks/README.md."""
    base = next(iter(rows.values()))["tokens_per_s"]
    pct = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
    lines = ["| configuration | tokens/s | x first row | MFU (measured matmul) | MFU (datasheet) "
             "| peak GPU GB |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        mem = "-" if r["peak_gpu_gb"] is None else f"{r['peak_gpu_gb']:.1f}"
        lines.append(f"| {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f} | "
                     f"{pct(r['mfu_end_to_end'])} | {pct(r['mfu_datasheet'])} | {mem} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny config on CPU (fp32): checks the script itself")
    ap.add_argument("--out", help="also write the result as JSON here")
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    ap.add_argument("--configs", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the GPU's dense bf16 datasheet peak (default: from DATASHEET_BF16_TFLOPS by device name)")
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in ROWS]
    if unknown or not configs:
        ap.error(f"--configs: unknown {unknown}; choose from {', '.join(ROWS)}")
    import torch

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        ap.error("no CUDA GPU here; use --dry-run to check the script on CPU")
    device = torch.device("cpu" if dry else "cuda")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else datasheet_peak(name)
    shapes, job = (TINY, DRY_JOB) if dry else (LLAMA_1B, FULL_JOB)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = build_model_dir(work / "model", shapes)
        rows = synthetic_pairs(job)
        n = matmul_params(folder)
        rate = matmul_rate(device, dry)
        for config in configs:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            dl = run_deltalearn(folder, rows, job, work / config, precision="fp32" if dry else "auto",
                                **ROWS[config])
            mem = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
            results[config] = row_result(dl, n, rate, peak, mem)
        trl = "skipped" if args.no_trl or dry else run_trl(folder, rows, job, work)
    first = results[configs[0]]
    result = {"device": name, "torch": torch.__version__, "matmul_params": n, "job": job,
              "bf16_matmul_tflops": rate / 1e12, "datasheet_bf16_tflops": peak / 1e12 if peak else None,
              **first, "ln2": math.log(2), "trl": trl, "rows": results}
    if isinstance(trl, dict):
        result["x_trl_end_to_end"] = trl["e2e_s"] / (first["ref_s"] + first["train_s"])
    print(json.dumps(result, indent=1))
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
