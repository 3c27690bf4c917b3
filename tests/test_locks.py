"""One writer per artifact, with real processes: a second writer is refused naming the artifact and the holder,
a lock left by kill -9 is taken over, and two `deltalearn generate` on one --out cannot both write it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deltalearn.locks import ArtifactBusy, artifact_lock, lock_path, read_holder

SRC = str(Path(__file__).resolve().parent.parent / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}

HOLDER = """
import contextlib, sys
from deltalearn.locks import artifact_lock
with contextlib.ExitStack() as stack:
    for p in sys.argv[1:]:
        stack.enter_context(artifact_lock(p))
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin (or kills us)
"""


def hold(*paths):
    """Another process holding the locks of `paths` (returns once it holds them)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, paths)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    line = p.stdout.readline()
    assert line.strip() == "locked", p.stderr.read()
    return p


def release(p):
    p.stdin.close()
    assert p.wait(timeout=30) == 0


def test_second_process_is_refused_naming_artifact_and_holder(tmp_path):
    art = tmp_path / "gens" / "model.jsonl"
    p = hold(art)
    try:
        info = read_holder(lock_path(art))
        assert info["pid"] == p.pid and info["host"] and info["started"]
        with pytest.raises(ArtifactBusy) as e:
            with artifact_lock(art, what="generations file"):
                pass
        msg = str(e.value)
        assert str(art) in msg and f"pid {p.pid}" in msg and "generations file" in msg and info["started"] in msg
    finally:
        release(p)
    with artifact_lock(art):  # free again once the holder is done
        assert read_holder(lock_path(art))["pid"] == os.getpid()
    assert not lock_path(art).exists()  # released locks leave no file behind


def test_lock_is_reentrant_within_a_process(tmp_path):
    with artifact_lock(tmp_path / "run"):
        with artifact_lock(tmp_path / "run"):
            pass
        assert lock_path(tmp_path / "run").exists()  # still held by the outer block
    assert not lock_path(tmp_path / "run").exists()


def test_lock_of_a_killed_holder_is_taken_over(tmp_path, capfd):
    art = tmp_path / "pairs"
    p = hold(art)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert read_holder(lock_path(art))["pid"] == p.pid  # the dead holder's note is still on disk
    with artifact_lock(art, what="pairs folder"):
        assert read_holder(lock_path(art))["pid"] == os.getpid()
    err = capfd.readouterr().err
    assert f"took over the lock of pairs folder {art}" in err and f"pid {p.pid}" in err


def test_every_stage_refuses_an_artifact_held_by_another_process(tmp_path, tiny_model_dir, toy_pairs):
    """generate, pair, the training folder, eval and a whole `deltalearn run` each take their artifact's lock
    before doing any work."""
    from deltalearn.evaluate import evaluate_model
    from deltalearn.generate import generate_responses
    from deltalearn.pairs import save_pairs
    from deltalearn.pipeline import run_pipeline
    from deltalearn.recipe import EvalConfig, PromptsConfig, Recipe, TrainConfig
    from deltalearn.train import train

    gen, pairs, arm, ev, run = (tmp_path / "g.jsonl", tmp_path / "pairs", tmp_path / "arm",
                                tmp_path / "out" / "eval" / "m.json", tmp_path / "run")
    p = hold(gen, pairs, arm, ev, run)
    try:
        calls = {
            gen: lambda: generate_responses(tiny_model_dir, [{"id": "a", "prompt": "hi"}], gen, progress=False),
            pairs: lambda: save_pairs([{"id": "a", "prompt": "p", "chosen": "c", "rejected": "r"}], pairs),
            arm: lambda: train(TrainConfig(model=tiny_model_dir, batch_size=2, micro_batch_size=1), toy_pairs, arm,
                               progress=False),
            ev: lambda: evaluate_model(tiny_model_dir, EvalConfig(prompts=PromptsConfig(path="x.jsonl")),
                                       tmp_path / "out", label="m", progress=False),
            run: lambda: run_pipeline(Recipe(output_dir=str(run)), progress=False),
        }
        for art, call in calls.items():
            with pytest.raises(ArtifactBusy, match=f"pid {p.pid}") as e:
                call()
            assert str(art) in str(e.value)
        assert not gen.exists() and not pairs.exists() and not (arm / "metrics.jsonl").exists()
    finally:
        release(p)


def _generate_cmd(model, prompts, out):
    return [sys.executable, "-m", "deltalearn.cli", "generate", "--models", model, "--prompts", str(prompts),
            "--out", str(out), "--max-new-tokens", "16", "--batch-size", "1", "--precision", "fp32", "--no-progress"]


def test_two_generate_runs_on_one_out_cannot_both_write(tmp_path, tiny_model_dir):
    """The issue's case: two `deltalearn generate --out X` at once. Whichever takes the lock first writes; the
    other is refused at once, naming it; the file ends with exactly one row per prompt."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i:02d}", "prompt": f"Question number {i}?"}) + "\n"
                               for i in range(16)))
    out = tmp_path / "gens"
    logs = [tmp_path / f"err{i}.txt" for i in range(2)]
    procs = [subprocess.Popen(_generate_cmd(tiny_model_dir, prompts, out), env=ENV, stdout=subprocess.DEVNULL,
                              stderr=log.open("w")) for log in logs]
    results = [(p.pid, p.wait(timeout=600), log.read_text()) for p, log in zip(procs, logs)]
    codes = sorted(rc for _, rc, _ in results)
    assert codes == [0, 2], results
    (winner, *_), (_, _, refused_err) = sorted(results, key=lambda r: r[1])
    target = out / "tiny-llama.jsonl"
    assert f"pid {winner}" in refused_err and str(target) in refused_err
    ids = [json.loads(x)["id"] for x in target.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 16  # one row per prompt, no duplicates
