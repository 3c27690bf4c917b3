"""Kill -9 anywhere: `deltalearn run` on a small recipe (two tiny random Llamas) is killed with SIGKILL at random
points of every stage (generation, pairing, the reference pass, training, checkpoint writing, eval, report),
rerun each time, and its final artifacts must equal an uninterrupted run's: generation rows, pair sets, losses,
final weights (bit for bit) and eval numbers.

A trial is one killed process followed by the next process on the same run folder; a chain ends with a rerun
that finishes. Kill points: a stage is chosen, the process is started, and SIGKILL lands a random time after the
stage's banner (within the stage's duration in the uninterrupted run), or, for "checkpoint", the moment a
checkpoint's temporary folder appears. The stage that was really running is read from the process's output.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import build_tiny_llama

SRC = str(Path(__file__).resolve().parent.parent / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
STAGES = ["generate", "pair", "train", "checkpoint", "eval", "report"]
PROMPTS = ["Name a fruit.", "Describe the sea.", "Give me a tip for sleeping well.", "What is a verb?",
           "Suggest a name for a cat.", "How do plants grow?", "Why is the sky blue?", "Write a haiku about rain."]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, smollm2_dir):
    d = tmp_path_factory.mktemp("kill9")
    big = build_tiny_llama(d / "big", smollm2_dir, hidden=64, seed=1)
    small = build_tiny_llama(d / "small", smollm2_dir, hidden=32, seed=2)
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (d / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:3]))
    rec = {
        "name": "kill9", "seed": 0, "prompts": {"path": str(d / "prompts.jsonl")},
        "generate": {"models": [big, small], "max_new_tokens": 8, "batch_size": 2, "temperature": 1.0,
                     "precision": "fp32"},
        "pair": {"rule": "ladder", "sizes": {big: 2, small: 1}, "drop_truncated": False},
        "train": {"model": big, "loss": "dpo", "lr": 1e-3, "batch_size": 4, "micro_batch_size": 2, "max_len": 64,
                  "max_steps": 4, "save_every": 1, "precision": "fp32"},
        "eval": {"prompts": {"path": str(d / "eval.jsonl")}, "utilities": ["response_words"], "max_new_tokens": 6},
        "arms": [{"name": "dpo"}],
    }
    path = d / "kill9.yaml"
    path.write_text(yaml.safe_dump(rec))
    return path


def command(recipe: Path, run_dir: Path) -> list[str]:
    # each run has its own reference cache, so every interrupted run really does the reference pass
    ref_cache = run_dir.parent / f"{run_dir.name}-ref"
    return [sys.executable, "-m", "deltalearn.cli", "run", str(recipe), "--no-progress",
            "--set", f"output_dir={run_dir}", "--set", f"train.ref_cache_dir={ref_cache}"]


def run_to_end(recipe: Path, run_dir: Path) -> None:
    r = subprocess.run(command(recipe, run_dir), env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def stage_seconds(run_dir: Path) -> dict[str, float]:
    m = json.loads((run_dir / "manifest.json").read_text())
    return {k: v["seconds"] for k, v in m["stages"].items()}


def killed_once(recipe: Path, run_dir: Path, target: str, durations: dict[str, float], rng: random.Random) -> str:
    """Start the run, SIGKILL it at a random point of `target`; return the stage that was running (or 'finished')."""
    log = run_dir.parent / f"{run_dir.name}.log"
    with log.open("w") as out:
        p = subprocess.Popen(command(recipe, run_dir), env=ENV, stdout=out, stderr=subprocess.STDOUT, text=True)
    ckpts = run_dir / "arms" / "dpo" / "checkpoints"
    banner = f"[{'train' if target == 'checkpoint' else target}]"
    deadline = time.time() + 600
    kill_at = None
    while p.poll() is None and time.time() < deadline:
        if target == "checkpoint":
            if ckpts.is_dir() and any(c.name.endswith(".tmp") for c in ckpts.iterdir()):
                break
        elif kill_at is None and banner in log.read_text():
            # within the first 60% of the stage's uninterrupted duration, so the kill lands in it despite jitter
            kill_at = time.time() + rng.uniform(0, 0.6) * max(durations.get(target, 1.0), 0.2)
        elif kill_at is not None and time.time() >= kill_at:
            break
        time.sleep(0.005)
    if p.poll() is not None:
        return "finished"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    banners = [s for s in ("prompts", "generate", "pair", "train", "eval", "report") if f"[{s}]" in log.read_text()]
    stage = banners[-1] if banners else "startup"
    if stage == "train" and target == "checkpoint":
        stage = "checkpoint"
    return stage


def artifacts(run_dir: Path) -> dict:
    """What a finished run produced, without timings."""
    gens = {f.name: sorted((r["id"], r["response"]) for r in map(json.loads, f.read_text().splitlines()))
            for f in sorted((run_dir / "generations").glob("*.jsonl"))}
    from deltalearn.io import read_table

    pairs = sorted((r["id"], json.dumps(r["prompt"]), json.dumps(r["chosen"]), json.dumps(r["rejected"]))
                   for r in read_table(run_dir / "pairs"))
    arm = run_dir / "arms" / "dpo"
    losses = [{k: v for k, v in json.loads(x).items() if k not in ("tokens_per_s", "step_s")}
              for x in (arm / "metrics.jsonl").read_text().splitlines()]
    weights = load_file(str(arm / "model" / "model.safetensors"))
    evals = {f.name: json.loads(f.read_text())["metrics"] for f in sorted((run_dir / "eval").glob("*.json"))
             if not f.name.endswith(".meta.json")}
    assert set(evals) == {"base.json", "dpo.json"}
    assert (run_dir / "report.html").exists() and (arm / "COMPLETED").exists()
    return {"generations": gens, "pairs": pairs, "losses": losses, "weights": weights, "eval": evals}


def assert_same(a: dict, b: dict) -> None:
    assert a["generations"] == b["generations"]
    assert a["pairs"] == b["pairs"]
    assert a["losses"] == b["losses"]
    assert a["weights"].keys() == b["weights"].keys()
    assert all(a["weights"][k].equal(b["weights"][k]) for k in a["weights"])
    assert a["eval"] == b["eval"]


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_to_end(recipe, run_dir)
    return artifacts(run_dir), stage_seconds(run_dir)


def chain(recipe: Path, run_dir: Path, targets: list[str], durations: dict, rng: random.Random) -> list[tuple]:
    """Kill at each target in turn (one process each), then finish with an uninterrupted rerun."""
    outcomes = []
    for target in targets:
        outcomes.append((target, killed_once(recipe, run_dir, target, durations, rng)))
    run_to_end(recipe, run_dir)
    return outcomes


def report(name: str, trials: list[tuple]) -> None:
    print(f"\n{name}: {len(trials)} kills (target -> stage running when killed): "
          + ", ".join(f"{t}->{s}" for t, s in trials))


def test_kill9_during_each_stage_then_rerun_equals_uninterrupted(recipe, reference, tmp_path):
    """Default suite: one chain, one kill in generation, at a checkpoint write and in eval."""
    ref, durations = reference
    rng = random.Random(15)
    trials = chain(recipe, tmp_path / "run", ["generate", "checkpoint", "eval"], durations, rng)
    report("kill9 default", trials)
    assert_same(artifacts(tmp_path / "run"), ref)
    assert any(s != "finished" for _, s in trials)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_kill9_random_points_many(recipe, reference, tmp_path, seed):
    """make test-slow: 3 chains x 5 kills at random stages (in pipeline order), each chain rerun to the end."""
    ref, durations = reference
    rng = random.Random(seed)
    targets = sorted(rng.choices(STAGES, k=5), key=STAGES.index)
    trials = chain(recipe, tmp_path / "run", targets, durations, rng)
    report(f"kill9 chain {seed}", trials)
    assert_same(artifacts(tmp_path / "run"), ref)
