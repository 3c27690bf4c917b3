"""DPO throughput and MFU of deltalearn on one GPU: a random-init ~1B Llama built from a config (nothing downloaded).

    python benchmarks/bench_gpu.py                # on a CUDA GPU, one command, a few minutes (issue 19)
    python benchmarks/bench_gpu.py --dry-run      # on CPU: a tiny config through the same code (run by the tests)
    python benchmarks/bench_gpu.py --out result.json

The job: Llama-3.2-1B's shapes (hidden 2048, 16 layers, MLP 8192, 32 heads / 8 KV heads, vocab 128256, tied head;
1.24B parameters), random weights; a character-level tokenizer with a ChatML template (made here, so no hub); pairs of
synthetic English-like text, prompt ~96 and responses ~900 tokens; DPO (sigmoid, beta 0.1), batch 32 = micro 8 x 4,
max_len 1024, `precision: auto` (bf16 autocast, fp32 master weights), `compile: auto`, the reference scored once and
cached (a cold cache: its pass is inside the end-to-end time). This is deltalearn's own `train()`, as `deltalearn
train` runs it.

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
    """Dense bf16 matmul FLOP/s measured on `device` (8192^2; 512^2 in the dry run)."""
    import torch

    n = 512 if dry else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
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


def run_deltalearn(folder: Path, rows: list[dict], job: dict, work: Path, precision: str) -> dict:
    from deltalearn.recipe import TrainConfig
    from deltalearn.tokenize import encode_pairs
    from deltalearn.models import load_tokenizer
    from deltalearn.train import train

    enc, _, _ = encode_pairs(load_tokenizer(str(folder)), rows, max_len=job["max_len"])
    tokens = sum(2 * len(e.prompt) + len(e.chosen) + len(e.rejected) for e in enc)
    cfg = TrainConfig(model=str(folder), loss="dpo", beta=0.1, lr=1e-5, warmup_ratio=0.0, min_lr_ratio=1.0,
                      batch_size=job["batch"], micro_batch_size=job["micro"], max_len=job["max_len"],
                      precision=precision, shuffle=False, ref_cache_dir=str(work / "refcache"))
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny config on CPU (fp32): checks the script itself")
    ap.add_argument("--out", help="also write the result as JSON here")
    ap.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    args = ap.parse_args(argv)
    import torch

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        ap.error("no CUDA GPU here; use --dry-run to check the script on CPU")
    device = torch.device("cpu" if dry else "cuda")
    shapes, job = (TINY, DRY_JOB) if dry else (LLAMA_1B, FULL_JOB)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = build_model_dir(work / "model", shapes)
        rows = synthetic_pairs(job)
        n = matmul_params(folder)
        rate = matmul_rate(device, dry)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        dl = run_deltalearn(folder, rows, job, work, precision="fp32" if dry else "auto")
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
        trl = "skipped" if args.no_trl or dry else run_trl(folder, rows, job, work)
    e2e = dl["ref_s"] + dl["train_s"]
    steady = sum(dl["steady_step_s"])
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__, "matmul_params": n, "job": job, "bf16_matmul_tflops": rate / 1e12,
        "tokens": dl["tokens"], "precision": dl["precision"], "compiled": dl["compiled"],
        "ref_s": dl["ref_s"], "train_s": dl["train_s"], "tokens_per_s": dl["tokens"] / e2e,
        "mfu_end_to_end": 8 * n * dl["tokens"] / e2e / rate,
        "mfu_steady_training": (6 * n * dl["steady_tokens"] / steady / rate) if steady > 0 else None,
        "first_loss": dl["losses"][0], "ln2": math.log(2), "losses": dl["losses"], "peak_gpu_gb": peak, "trl": trl,
    }
    if isinstance(trl, dict):
        result["x_trl_end_to_end"] = trl["e2e_s"] / e2e
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
