"""FSDP across 2 CPU processes (gloo), launched through the shipped configs/accelerate/fsdp_cpu.yaml: the same
losses, gradient norms, learning rates and final weights as one plain process, and a resume under FSDP (from the
engine's own checkpoint folder, found automatically) equal to the uninterrupted run."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from deltalearn.recipe import LoraConfig, TrainConfig
from deltalearn.train import train

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "accelerate"

SETTINGS = dict(loss="dpo_norm", lr=1e-3, batch_size=4, micro_batch_size=1, max_len=128, epochs=2, save_every=2,
                warmup_ratio=0.5, precision="fp32")


def metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def weights(out):
    return load_file(str(Path(out) / "model" / "model.safetensors"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_fsdp(pairs, model, out, refcache, settings=SETTINGS):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp_cpu.yaml"),
           "--main_process_port", str(free_port()), "-m", "deltalearn.cli", "train", "--pairs", str(pairs),
           "--model", model, "--out", str(out), "--no-progress", f"--set=train.ref_cache_dir={refcache}",
           *[f"--set=train.{k}={v}" for k, v in settings.items()]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def test_cpu_config_differs_from_the_gpu_one_only_in_device_lines():
    gpu = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())
    cpu = yaml.safe_load((CONFIGS / "fsdp_cpu.yaml").read_text())
    changed = {k for k in gpu.keys() | cpu.keys() if gpu.get(k) != cpu.get(k)}
    assert changed == {"num_processes", "use_cpu", "mixed_precision"}


def test_fsdp_two_processes_match_one_and_resume_exactly(tiny_model_dir, toy_pairs, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs))
    refcache = tmp_path / "refcache"
    one, fsdp, cut = tmp_path / "one", tmp_path / "fsdp", tmp_path / "cut"
    train(TrainConfig(model=tiny_model_dir, ref_cache_dir=str(refcache), **SETTINGS), str(pairs), one,
          progress=False)
    launch_fsdp(pairs, tiny_model_dir, fsdp, refcache)
    assert json.loads((fsdp / "train_summary.json").read_text())["processes"] == 2
    ckpt = fsdp / "checkpoints" / "step-2"
    assert (ckpt / "COMPLETE").exists() and (ckpt / "pytorch_model_fsdp.bin").exists()  # the engine's own save
    # accelerate pickles each rank's RNG (read back with weights_only=False); ours are safetensors
    assert not list(ckpt.glob("*.pkl"))
    assert {"rng_0.safetensors", "rng_1.safetensors"} <= {f.name for f in ckpt.iterdir()}

    m1, m2 = metrics(one), metrics(fsdp)
    assert [r["step"] for r in m2] == [1, 2, 3, 4]
    for a, b in zip(m1, m2):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), a["step"]  # the sharded clip's norm
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    w1, w2 = weights(one), weights(fsdp)
    assert w1.keys() == w2.keys()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)

    # Killed after step 3 with the checkpoint of step 2 on disk (a torn metrics line too): the rerun finds the
    # FSDP checkpoint by itself and continues with the same data, LR schedule and weights.
    shutil.copytree(fsdp, cut)
    shutil.rmtree(cut / "model")
    (cut / "COMPLETED").unlink()
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in m2[:3]) + '{"step": 4, "lo')
    launch_fsdp(pairs, tiny_model_dir, cut, refcache)
    assert json.loads((cut / "train_summary.json").read_text())["resumed_from"] == 2
    got = metrics(cut)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(got, m2):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9), a["step"]  # warmup does not restart
    w3 = weights(cut)
    assert all(torch.allclose(w3[k], w2[k], atol=1e-6) for k in w2)


def test_fsdp_lora_with_the_adapters_off_reference_matches_one_process(tiny_model_dir, toy_pairs, tmp_path):
    """LoRA under FSDP, reference = the base with adapters off, scored live (no cache): that forward must go through
    the prepared module so FSDP unshards its root, and the clip must see the adapters' shards, not a per-rank
    fraction. Losses, grad norms and the merged model equal one process."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs))
    lora = {**SETTINGS, "lr": 1e-2, "epochs": 1, "save_every": 0, "ref_cache": False}
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    train(TrainConfig(model=tiny_model_dir, lora=LoraConfig(r=4, alpha=8), **lora), str(pairs), one, progress=False)
    launch_fsdp(pairs, tiny_model_dir, fsdp, tmp_path / "refcache",
                {**lora, "lora.r": 4, "lora.alpha": 8})
    m1, m2 = metrics(one), metrics(fsdp)
    assert len(m1) == len(m2) == 2
    assert m2[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # the adapters start at zero: policy == reference
    for a, b in zip(m1, m2):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), a["step"]
    assert m1[-1]["loss"] != pytest.approx(0.693147, abs=1e-4)  # the adapters did train
    w1, w2 = weights(one), weights(fsdp)
    assert w1.keys() == w2.keys()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    assert (fsdp / "adapter" / "adapter_model.safetensors").exists()
