"""A real SIGINT / SIGTERM to a real `deltalearn train` process: it checkpoints at the next step boundary and
stops; the rerun resumes from there and ends with the losses and weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file


def _cmd(pairs, out, model, steps):
    return [sys.executable, "-m", "deltalearn.cli", "train", "--pairs", str(pairs), "--out", str(out),
            "--model", model, "--precision", "fp32", "--loss", "dpo_norm", "--no-progress",
            "--set", f"train.max_steps={steps}", "--set", "train.batch_size=2", "--set", "train.micro_batch_size=1",
            "--set", "train.max_len=64", "--set", "train.lr=1e-3", "--set", "train.warmup_ratio=0"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # three (two) fresh processes: 46 s (32 s) to 187 s (120 s) on the shared 2-core machine
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_checkpoints_and_the_rerun_resumes_exactly(tiny_model_dir, toy_pairs, tmp_path, sig):
    """Before: train.save_every defaults to 0, so Ctrl-C left no checkpoint and the rerun restarted from step 0
    (`resumed_from: 0`) although the CLI said "rerun the same command to resume"; SIGTERM killed it outright."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs))
    steps = 40  # the signal lands after step 2 (polled every 50 ms): the run is cut well before its end
    out = tmp_path / "cut"
    proc = subprocess.Popen(_cmd(pairs, out, tiny_model_dir, steps), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        m = out / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + sig, err
    assert "saved the checkpoint" in err and "rerun the same command to resume" in err, err
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "COMPLETE").exists(), err
    k = int(ckpts[0].name.split("-")[1])
    assert 2 <= k < steps and not (out / "COMPLETED").exists()

    # the rerun resumes from the checkpoint and runs the rest of the same schedule
    r = subprocess.run(_cmd(pairs, out, tiny_model_dir, steps), env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed_from"] == k
    if sig == signal.SIGTERM:
        return  # the comparison with an uninterrupted run is the same for both signals: once is enough

    whole = tmp_path / "whole"
    r = subprocess.run(_cmd(pairs, whole, tiny_model_dir, steps), env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert _losses(out) == _losses(whole)
    a, b = load_file(out / "model" / "model.safetensors"), load_file(whole / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[n] == b[n]).all() for n in a)
