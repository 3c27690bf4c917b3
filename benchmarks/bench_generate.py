"""Generation throughput of the transformers backend: batched + length-sorted vs naive one-prompt-at-a-time.

    python benchmarks/bench_generate.py                        # 64 prompts x 64 new tokens, SmolLM2-135M, greedy
    python benchmarks/bench_generate.py --prompts 16 --max-new-tokens 16 --bf16-prompts 4    # a quick check

The job (issue 3, "Speed"): the first N train prompts of the sections experiment (real, varied questions), the
embedded SmolLM2-135M-Instruct in fp32, greedy, `max_new_tokens` new tokens at most, stop at EOS, in one process.
- naive:   `model.generate` on one unpadded prompt at a time (what a first script does).
- batched: `deltalearn.generate.generate_responses` (batches cut from the length-sorted prompts, left padding,
           KV cache), batch size --batch-size.
tokens/s = generated tokens (through EOS) / wall seconds of the generation calls (model loading excluded). The
ratio is the speed-up; "identical" is the share of prompts where both give the same text (greedy decoding of the
same model should agree; padding can flip a near-tie argmax).

bf16 vs fp32: greedy `generate_responses` with precision=bf16 (bf16 weights, as for a model `generate` loads by name;
and fp32 weights under autocast, as for a model handed to it) vs fp32 on the first --bf16-prompts prompts, each
timed on its second pass (the first builds the kernels for that dtype and those shapes). bf16
autocast is only fast where matmuls are native bf16 (AMX / AVX512-BF16 CPUs, recent GPUs); elsewhere it is
emulated and slow, which is why precision="auto" picks fp32 there (see deltalearn.precision). The result records
which case this machine is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def naive(model, tok, prompts, max_new_tokens):
    import torch

    from deltalearn.tokenize import prompt_ids

    texts, tokens = [], 0
    t = time.perf_counter()
    for p in prompts:
        ids = torch.tensor([prompt_ids(tok, p["prompt"])])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id) + 1]
        tokens += len(new)
        texts.append(tok.decode(new, skip_special_tokens=True))
    return texts, tokens, time.perf_counter() - t


def batched(model, tok, prompts, max_new_tokens, batch_size, precision):
    from deltalearn.generate import generate_responses

    t = time.perf_counter()
    rows = generate_responses(model, prompts, tokenizer=tok, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              precision=precision, progress=False)
    secs = time.perf_counter() - t
    return [r["response"] for r in rows], sum(r["n_tokens"] for r in rows), secs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--bf16-prompts", type=int, default=8, help="0 skips the bf16 comparison")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    import torch

    from deltalearn.models import load_model
    from deltalearn.precision import cpu_has_native_bf16
    from deltalearn.prompts import load_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = [{"id": r["id"], "prompt": r["prompt"]} for r in load_prompts("builtin:sections_prompts", id_column="id")
               if r.get("split") == "train"][: args.prompts]
    model, tok = load_model("smollm2-135m")
    model.eval()
    res = {"model": "smollm2-135m", "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
           "batch_size": args.batch_size, "threads": torch.get_num_threads(), "cpu": platform.processor() or
           platform.machine(), "native_bf16": cpu_has_native_bf16(), "load_avg_start": load_avg(),
           "torch": torch.__version__}
    print(f"bench_generate: {len(prompts)} prompts, <= {args.max_new_tokens} new tokens, {res['threads']} threads, "
          f"load average {res['load_avg_start']}", file=sys.stderr)

    b_texts, b_tok, b_s = batched(model, tok, prompts, args.max_new_tokens, args.batch_size, "fp32")
    print(f"  batched: {b_tok} tokens in {b_s:.1f}s", file=sys.stderr)
    n_texts, n_tok, n_s = naive(model, tok, prompts, args.max_new_tokens)
    print(f"  naive:   {n_tok} tokens in {n_s:.1f}s", file=sys.stderr)
    res.update({"naive_tokens": n_tok, "naive_s": round(n_s, 2), "naive_tok_s": round(n_tok / n_s, 1),
                "batched_tokens": b_tok, "batched_s": round(b_s, 2), "batched_tok_s": round(b_tok / b_s, 1),
                "speedup": round((b_tok / b_s) / (n_tok / n_s), 2),
                "identical_batched_vs_naive": sum(a == b for a, b in zip(b_texts, n_texts)) / len(prompts)})

    if args.bf16_prompts:
        sub = prompts[: args.bf16_prompts]
        import copy

        # what `generate` does for a model it loads: bf16 weights, no autocast (a copy here, loading untimed) ...
        half = copy.deepcopy(model).to(torch.bfloat16)

        def warm_then_time(m, precision):
            # one untimed pass first: oneDNN builds its kernels per dtype and shape on first use, which cost the
            # first bf16 pass ~20% here (measured: 271 vs 340 tokens/s cold vs warm; fp32 178 vs 202), and the
            # fp32 model was already warm from the runs above, so a cold bf16 pass was not a fair comparison
            batched(m, tok, sub, args.max_new_tokens, args.batch_size, precision)
            return batched(m, tok, sub, args.max_new_tokens, args.batch_size, precision)

        f_texts, f_tok, f_s = warm_then_time(model, "fp32")
        h_texts, h_tok, h_s = warm_then_time(half, "bf16")
        # ... and fp32 weights under bf16 autocast (what it does for a model handed to it loaded)
        a_texts, a_tok, a_s = warm_then_time(model, "bf16")
        print(f"  bf16 vs fp32 on {len(sub)} prompts: {h_tok} tokens in {h_s:.1f}s vs {f_tok} in {f_s:.1f}s "
              f"(autocast: {a_tok} in {a_s:.1f}s)", file=sys.stderr)
        res.update({"bf16_prompts": len(sub), "fp32_tok_s": round(f_tok / f_s, 1), "bf16_tok_s": round(h_tok / h_s, 2),
                    "bf16_over_fp32": round((h_tok / h_s) / (f_tok / f_s), 3),
                    "identical_bf16_vs_fp32": sum(a == b for a, b in zip(h_texts, f_texts)) / len(sub),
                    "autocast_bf16_tok_s": round(a_tok / a_s, 2),
                    "autocast_over_fp32": round((a_tok / a_s) / (f_tok / f_s), 3),
                    "identical_autocast_vs_fp32": sum(a == b for a, b in zip(a_texts, f_texts)) / len(sub)})
    res["load_avg_end"] = load_avg()

    print(json.dumps(res, indent=2))
    print(f"\n| run | tokens | seconds | tokens/s |\n|---|---|---|---|\n"
          f"| naive (1 prompt at a time) | {n_tok} | {n_s:.1f} | {n_tok / n_s:.1f} |\n"
          f"| batched, length-sorted (bs {args.batch_size}) | {b_tok} | {b_s:.1f} | {b_tok / b_s:.1f} |\n"
          f"speed-up: {res['speedup']}x; identical outputs: {res['identical_batched_vs_naive']:.0%}")
    if args.bf16_prompts:
        print(f"bf16/fp32 tokens/s: {res['bf16_over_fp32']} (native bf16: {res['native_bf16']}); identical outputs: "
              f"{res['identical_bf16_vs_fp32']:.0%} of {res['bf16_prompts']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
