"""The training loop's speed levers (speedups.py): compiled layers train the same model as eager ones, the
reference pass uses the policy's compiled kernels (step 1 is ln 2 exactly in bf16), "auto" compiles only where it
was measured to pay, the allocator setting stops the page-fault storm; and the benchmarks' own code paths run (the
GPU one's CPU dry run, the TRL comparison on a tiny model)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deltalearn import speedups
from deltalearn.recipe import ConfigError, TrainConfig, from_dict
from deltalearn.train import train

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(loss="dpo", beta=0.1, lr=1e-3, batch_size=4, micro_batch_size=2, max_len=128, epochs=2, warmup_ratio=0.0,
            shuffle=False)


def _run(tmp_path, model, pairs, name, **kw):
    out = tmp_path / name
    s = train(TrainConfig(model=model, ref_cache_dir=str(tmp_path / f"rc-{name}"), **{**TINY, **kw}), pairs, out,
              progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return s, rows, load_file(str(out / "model" / "model.safetensors"))


@pytest.mark.slow
def test_compiled_layers_train_the_same_model_in_fp32(tiny_model_dir, toy_pairs, tmp_path):
    s0, eager, w0 = _run(tmp_path, tiny_model_dir, toy_pairs, "eager", precision="fp32", compile=False)
    s1, comp, w1 = _run(tmp_path, tiny_model_dir, toy_pairs, "compiled", precision="fp32", compile=True)
    assert (s0["compiled"], s1["compiled"]) == (False, True)
    assert len(eager) == len(comp) == 4
    for a, b in zip(eager, comp):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), a["step"]
    assert w0.keys() == w1.keys()  # compiling in place keeps the checkpoint's parameter names
    assert all(torch.allclose(w0[k], w1[k], atol=1e-5) for k in w0)


@pytest.mark.slow
def test_compiled_bf16_reference_uses_the_policys_kernels(tiny_model_dir, toy_pairs, tmp_path):
    """The reference is scored by a model compiled like the policy (same attention, same kernels), in the
    training's micro-batches: the first step's margin is exactly 0, the loss exactly ln 2."""
    s, rows, _ = _run(tmp_path, tiny_model_dir, toy_pairs, "bf16", precision="bf16", compile=True)
    assert s["compiled"] and s["precision"] == "bf16"
    assert rows[0]["rewards/margin"] == 0.0
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)


def test_auto_compiles_only_where_it_was_measured_to_pay():
    big = speedups.COMPILE_MIN_PARAMS
    base = dict(bf16=True, n_params=big, train_tokens=speedups.COMPILE_MIN_TOKENS, distributed=False,
                gradient_checkpointing=False, lora=False)
    assert speedups.should_compile("auto", **base)
    assert not speedups.should_compile("auto", **{**base, "bf16": False})  # fp32: matmul-bound, ~5% gain
    assert not speedups.should_compile("auto", **{**base, "n_params": big - 1})  # tiny: compilation never pays
    assert not speedups.should_compile("auto", **{**base, "train_tokens": speedups.COMPILE_MIN_TOKENS - 1})  # short
    for combo in ("distributed", "gradient_checkpointing", "lora"):
        assert not speedups.should_compile("auto", **{**base, combo: True})
    assert speedups.should_compile(True, **{**base, "bf16": False, "n_params": 1})  # an explicit choice wins
    assert not speedups.should_compile(False, **base)


def test_eager_attention_only_on_cpu_and_short_sequences():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert speedups.attention_for(cpu, speedups.EAGER_ATTENTION_MAX_LEN, compiled=True) == "eager"
    assert speedups.attention_for(cpu, speedups.EAGER_ATTENTION_MAX_LEN + 1, compiled=True) is None  # [L, L] scores
    assert speedups.attention_for(cpu, 512, compiled=False) is None
    assert speedups.attention_for(cuda, 512, compiled=True) is None  # flash kernels win on GPUs


def test_compile_setting_is_validated():
    assert from_dict(TrainConfig, {"compile": False}).compile is False
    assert from_dict(TrainConfig, {"compile": "auto"}).compile == "auto"
    with pytest.raises(ConfigError, match="compile"):
        from_dict(TrainConfig, {"compile": "yes please"})


def test_decoder_layers_are_the_models_repeated_blocks(tiny_model_dir):
    from deltalearn.models import load_model

    model, _ = load_model(tiny_model_dir, with_tokenizer=False)
    layers = speedups.decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    assert all(type(m).__name__ == "LlamaDecoderLayer" for m in layers)


FAULTS = """
import resource, sys, torch
from deltalearn import speedups
if sys.argv[1] == "keep":
    assert speedups.keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # warm-up: the heap grows to the loop's needs once (glibc settles in a few rounds)
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
f0 = faults()
for _ in range(20):
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MB: above glibc's largest mmap threshold
print(faults() - f0)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting_large_blocks():
    def faults(mode: str) -> int:
        r = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return int(r.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 20 * (64 << 20) // 4096 // 2  # each 64 MB block faulted in again (4 KiB pages)
    assert kept < default / 10  # the blocks reuse memory already mapped


def test_gpu_benchmark_dry_run_on_cpu(tmp_path):
    """benchmarks/bench_gpu.py's own code path on a tiny config: model from a config, tokenizer made on the spot,
    deltalearn's train() with a cold reference cache, MFU against a measured matmul rate."""
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["first_loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 1
    assert len(res["losses"]) == 2 and res["tokens"] > 0 and res["matmul_params"] > 0
    assert 0 < res["mfu_end_to_end"] < 1 and res["tokens_per_s"] > 0
    # the padded / packed / packed + shared-prompt rows: the same losses and the same real-token count
    rows = res["rows"]
    assert list(rows) == ["padded", "packed", "packed-shared"]
    for name, row in rows.items():
        assert row["first_loss"] == pytest.approx(math.log(2), abs=1e-6), name
        assert row["losses"] == pytest.approx(rows["padded"]["losses"], abs=1e-5), name
        assert row["tokens"] == rows["padded"]["tokens"] and 0 < row["mfu_end_to_end"] < 1, name
    assert "| packed-shared |" in r.stdout


@pytest.mark.slow  # 88 s idle on a 2-core AVX2 CPU: the benchmark script end to end, TRL included
def test_train_benchmark_runs_both_libraries_on_a_tiny_model(tmp_path, tiny_model_dir):
    """benchmarks/bench_train.py end to end on the tiny Llama (BENCH_MODEL): deltalearn and TRL each in their own
    process on the same 8 pairs, a matmul probe before each, one saved run that --from-json prints again; both start
    at ln 2 (policy == reference). The losses' agreement with TRL is tests/test_trl_equivalence.py's."""
    out = tmp_path / "run.json"
    env = {**os.environ, "BENCH_MODEL": tiny_model_dir, "BENCH_OUT": str(out),
           "BENCH_MATMUL_SECONDS": "0.05"}
    script = str(ROOT / "benchmarks" / "bench_train.py")
    r = subprocess.run([sys.executable, script, "--pairs", "8", "--configs", "dl-fp32,dl-fp32-packed-shared,trl"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads(out.read_text())
    res = saved["results"]
    assert set(res) == {"dl-fp32", "dl-fp32-packed-shared", "trl"}
    # both levers: the same losses, and the same (real) token count, so tokens/s credits only the time saved
    assert res["dl-fp32-packed-shared"]["losses"] == pytest.approx(res["dl-fp32"]["losses"], abs=1e-5)
    assert res["dl-fp32-packed-shared"]["tokens"] == res["dl-fp32"]["tokens"]
    for name, x in res.items():
        assert x["losses"][0] == pytest.approx(math.log(2), abs=1e-4), name
        assert x["tokens_per_s"] > 0 and x["peak_rss_gb"] > 0.1 and x["probe"]["fp32_gflops"] > 0
    again = subprocess.run([sys.executable, script, "--from-json", str(out)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = [ln for ln in again.stdout.splitlines() if ln.startswith("| dl-fp32 ") or ln.startswith("| trl ")]
    assert len(rows) == 2 and " 1.00 " in rows[1]  # TRL against itself


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ('{"results": ', "not JSON (line 1"),
    ('{"results": {}}', "no 'matmul' mapping"),
    ('{"matmul": {}, "results": {"trl": {"precision": "fp32"}}}', "results.trl has no pairs, ref_s"),
])
def test_train_benchmark_refuses_a_bad_saved_run_naming_file_and_field(tmp_path, content, message):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--from-json", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and f"--from-json {path}: " in r.stderr and message in r.stderr, r.stderr[-2000:]


def test_train_benchmark_configurations_select_the_levers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.dl_settings("dl-fp32") == dict(precision="fp32", checkpointing=False, compile="auto")
    assert bench.dl_settings("dl-fp32-packed") == dict(precision="fp32", checkpointing=False, compile="auto",
                                                       padding_free=True)
    assert bench.dl_settings("dl-bf16-shared") == dict(precision="bf16", checkpointing=False, compile="auto",
                                                       share_prompt=True)
    assert bench.dl_settings("dl-bf16-packed-shared") == dict(precision="bf16", checkpointing=False, compile="auto",
                                                              padding_free=True, share_prompt=True)
    assert bench.dl_settings("dl-bf16-eager")["compile"] is False and bench.dl_settings("dl-gc")["checkpointing"]
    for lever in ("packed", "shared", "packed-shared"):
        assert f"dl-fp32-{lever}" in bench.CONFIGS and f"dl-bf16-{lever}" in bench.BF16_CONFIGS
