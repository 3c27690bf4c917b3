"""Multi-process correctness on 2 CPU processes (gloo), launched through the shipped configs/accelerate/*_cpu.yaml:
decisions one rank makes for all (reference-cache hit or miss, which checkpoint to resume from), the reference scored
in the weights and dtype the engine trains with (step 1 = ln 2 under FSDP bf16), and a launch config whose mixed
precision disagrees with the recipe. Every launch is bounded by a timeout: a rank waiting in a collective that the
other never enters is a hang, which the test reports as a failure instead of waiting forever."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import deltalearn

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "accelerate"
SRC = Path(deltalearn.__file__).resolve().parents[1]  # the deltalearn under test (the worktree's src)
LAUNCH_TIMEOUT = 240  # seconds: a tiny model's launch takes well under a minute; a hang is killed here

SETTINGS = dict(loss="dpo", lr=1e-3, batch_size=4, micro_batch_size=1, max_len=96, max_steps=2, warmup_ratio=0.0,
                precision="fp32")

# Each rank its own DELTALEARN_CACHE (node-local caches, as on several machines), then the CLI as `-m` would run it.
PER_RANK_CACHE = """import os, runpy, sys
os.environ["DELTALEARN_CACHE"] = os.environ["TEST_CACHE_BASE"] + "-rank" + os.environ["RANK"]
sys.argv[0] = "deltalearn"
runpy.run_module("deltalearn.cli", run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config, args, *, settings=SETTINGS, script=None, env=None, extra=()):
    """`accelerate launch` of `deltalearn train` (or `script`); returns (returncode, output, seconds) or fails on a
    hang."""
    import time

    target = [str(script)] if script else ["-m", "deltalearn.cli"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *extra,
           "--main_process_port", str(free_port()), *target, "train", *[str(a) for a in args], "--no-progress",
           *[f"--set=train.{k}={v}" for k, v in settings.items()]]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(SRC), **(env or {})}
    t0 = time.time()
    p = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        import psutil

        # the launcher and the ranks (torchrun starts each rank in a session of its own, so killpg would miss them)
        for proc in [*psutil.Process(p.pid).children(recursive=True), psutil.Process(p.pid)]:
            proc.kill()
        out, _ = p.communicate()
        pytest.fail(f"hung: killed after {LAUNCH_TIMEOUT} s\n{out[-3000:]}")
    return p.returncode, out, time.time() - t0


def first_traceback(out: str) -> str:
    """The first rank's traceback (the others then fail in their collectives, which says little)."""
    at = out.find("Traceback")
    return out[at:at + 4000] if at >= 0 else out[-4000:]


def metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def summary(out):
    return json.loads((Path(out) / "train_summary.json").read_text())


@pytest.fixture()
def pairs_file(toy_pairs, tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs))
    return p


@pytest.mark.parametrize("cpu,gpu,changed", [("ddp_cpu.yaml", "ddp.yaml", {"num_processes", "use_cpu",
                                                                          "mixed_precision"}),
                                             ("fsdp_bf16_cpu.yaml", "fsdp.yaml", {"num_processes", "use_cpu"})])
def test_cpu_configs_differ_from_the_gpu_ones_only_in_device_lines(cpu, gpu, changed):
    import yaml

    a, b = (yaml.safe_load((CONFIGS / name).read_text()) for name in (gpu, cpu))
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == changed


def test_per_rank_caches_hit_or_miss_is_decided_once(tiny_model_dir, pairs_file, tmp_path):
    """Rank 0's cache holds the entry, rank 1's does not (each rank its own DELTALEARN_CACHE): rank 0 decides, the
    other follows. Before, rank 0 went on to training while rank 1 waited in the fill's all-reduce: a hang."""
    script = tmp_path / "per_rank_cache.py"
    script.write_text(PER_RANK_CACHE)
    env = {"TEST_CACHE_BASE": str(tmp_path / "cache")}
    ddp = CONFIGS / "ddp_cpu.yaml"
    rc, out, _ = launch(ddp, ["--pairs", pairs_file, "--model", tiny_model_dir, "--out", tmp_path / "a"],
                        script=script, env=env)
    assert rc == 0, first_traceback(out)
    assert summary(tmp_path / "a")["ref_cache_hit"] is False
    assert list((tmp_path / "cache-rank0" / "ref_logps").glob("*.safetensors"))  # only the main process writes
    assert not (tmp_path / "cache-rank1" / "ref_logps").exists()
    rc, out, _ = launch(ddp, ["--pairs", pairs_file, "--model", tiny_model_dir, "--out", tmp_path / "b"],
                        settings={**SETTINGS, "beta": 0.5}, script=script, env=env)
    assert rc == 0, first_traceback(out)
    assert summary(tmp_path / "b")["ref_cache_hit"] is True
    assert metrics(tmp_path / "b")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_fallback_past_a_corrupt_newest_checkpoint_with_two_processes(tiny_model_dir, pairs_file, tmp_path):
    """The newest checkpoint is corrupt; with --fallback-checkpoint rank 0 verifies, sets it aside and picks the
    previous one, the other rank waits and loads the same. Before, both ranks hashed and renamed it: rank 1 moved it
    away while rank 0 read it (FileNotFoundError)."""
    ddp = CONFIGS / "ddp_cpu.yaml"
    run = tmp_path / "run"
    args = ["--pairs", pairs_file, "--model", tiny_model_dir, "--out", run]
    settings = {**SETTINGS, "max_steps": 3, "save_every": 1, "ref_cache_dir": tmp_path / "refcache"}
    rc, out, _ = launch(ddp, args, settings=settings)
    assert rc == 0, first_traceback(out)
    full = metrics(run)
    (run / "COMPLETED").unlink()
    newest = run / "checkpoints" / "step-2"
    victim = newest / "trainable.safetensors"
    victim.write_bytes(victim.read_bytes()[:-64])
    rc, out, _ = launch(ddp, [*args, "--fallback-checkpoint"], settings=settings)
    assert rc == 0, first_traceback(out)
    assert summary(run)["resumed_from"] == 1
    assert (run / "checkpoints" / "corrupt-step-2").is_dir()
    assert out.count("set it aside") == 1  # decided once, by one rank
    got = metrics(run)
    assert [r["step"] for r in got] == [1, 2, 3]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in full], abs=1e-6)


def test_fsdp_bf16_step_one_is_ln2_and_param_dtype_recorded(tiny_model_dir, pairs_file, tmp_path):
    """FSDP with the GPU config's mixed precision (param_dtype bf16, reduce_dtype bf16) on 2 CPU processes: the
    reference is scored by the same bf16 weights and layout the policy trains with, so step 1 is ln 2 exactly.
    Before, the cache held fp32-weight scores and step 1 was 0.69286 on this model."""
    out_dir = tmp_path / "fsdp-bf16"
    rc, out, _ = launch(CONFIGS / "fsdp_bf16_cpu.yaml",
                        ["--pairs", pairs_file, "--model", tiny_model_dir, "--out", out_dir],
                        settings={**SETTINGS, "precision": "bf16", "max_steps": 1,
                                  "ref_cache_dir": tmp_path / "refcache"})
    assert rc == 0, first_traceback(out)
    assert metrics(out_dir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    s = summary(out_dir)
    assert s["param_dtype"] == "bfloat16" and s["processes"] == 2


def test_launch_mixed_precision_disagreeing_with_the_recipe_is_an_error(tiny_model_dir, pairs_file, tmp_path):
    """accelerate's bf16 autocast would silently override train.precision=fp32 (train_config.json said fp32 while
    step 1 ran in bf16): refused, naming both."""
    rc, out, _ = launch(CONFIGS / "ddp_cpu.yaml",
                        ["--pairs", pairs_file, "--model", tiny_model_dir, "--out", tmp_path / "x"],
                        extra=["--num_processes", "1", "--mixed_precision", "bf16"])
    assert rc != 0
    assert "mixed_precision" in out and "bf16" in out and "train.precision" in out and "fp32" in out
    assert not (tmp_path / "x" / "metrics.jsonl").exists()
