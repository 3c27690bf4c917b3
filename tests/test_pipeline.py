"""`deltalearn run` end to end on two tiny real models: every stage writes its artifact, a rerun skips them."""

import json
import subprocess
import sys

import yaml

import deltalearn as dl
from conftest import build_tiny_llama
from deltalearn.io import read_json
from deltalearn.runner import run_recipe
from deltalearn.recipe import load_recipe

PROMPTS = ["Name a fruit.", "Describe the sea.", "Give me a tip for sleeping well.", "What is a verb?",
           "Suggest a name for a cat.", "How do plants grow?", "Why is the sky blue?", "Write a haiku about rain."]


def _recipe(tmp_path, smollm2_dir):
    big = build_tiny_llama(tmp_path / "big", smollm2_dir, hidden=64, seed=1)
    small = build_tiny_llama(tmp_path / "small", smollm2_dir, hidden=32, seed=2)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    recipe = {
        "name": "tiny", "output_dir": str(tmp_path / "run"), "seed": 0,
        "prompts": {"path": str(tmp_path / "prompts.jsonl")},
        "generate": {"models": [big, small], "max_new_tokens": 6, "batch_size": 4, "temperature": 1.0},
        "pair": {"rule": "ladder", "sizes": {big: 2, small: 1}, "drop_truncated": False},
        "train": {"model": big, "loss": "dpo_norm", "lr": 1e-3, "batch_size": 4, "micro_batch_size": 2,
                  "max_len": 96, "max_steps": 2, "ref_cache_dir": str(tmp_path / "refcache")},
        "eval": {"prompts": {"path": str(tmp_path / "eval.jsonl")}, "utilities": ["response_words"],
                 "max_new_tokens": 6},
        "arms": [{"name": "dpo"}, {"name": "reversed", "pair": {"control": "reverse"}}],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_run_pipeline_end_to_end_and_resume(tmp_path, smollm2_dir):
    path = _recipe(tmp_path, smollm2_dir)
    run_dir = run_recipe(load_recipe(path), progress=False)
    m = read_json(run_dir / "manifest.json")
    assert set(m["stages"]) == {"prompts", "generate", "pair", "train", "eval", "report"}
    assert m["recipe"]["train"]["beta"] == 5.0 and m["versions"]["torch"]
    gens = sorted((run_dir / "generations").glob("*.jsonl"))
    assert len(gens) == 2 and all(len(g.read_text().splitlines()) == len(PROMPTS) for g in gens)
    from deltalearn.io import read_table

    fwd, rev = read_table(run_dir / "pairs"), read_table(run_dir / "pairs-reversed")
    assert len(fwd) == len(rev) == len(PROMPTS)
    by_id = {r["id"]: r for r in rev}
    assert all(by_id[r["id"]]["chosen"] == r["rejected"] for r in fwd)  # the control really swaps sides
    for arm in ("dpo", "reversed"):
        assert (run_dir / "arms" / arm / "COMPLETED").exists()
        assert len((run_dir / "arms" / arm / "metrics.jsonl").read_text().splitlines()) == 2
    assert {p.name for p in (run_dir / "eval").glob("*.json")} >= {"base.json", "dpo.json", "reversed.json"}
    assert (run_dir / "report.html").exists()
    # a rerun finds every artifact complete and rewrites none of them; this one through the Python API, with the
    # recipe as a dict and an override (dl.run and `deltalearn run` both end in runner.run_recipe)
    stamps = {p: p.stat().st_mtime_ns for p in [*gens, run_dir / "arms" / "dpo" / "metrics.jsonl"]}
    assert dl.run(yaml.safe_load(path.read_text()), ["train.max_steps=2"], progress=False) == run_dir
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_dry_run_loads_no_model(tmp_path, smollm2_dir):
    path = _recipe(tmp_path, smollm2_dir)
    out = subprocess.run([sys.executable, "-m", "deltalearn.cli", "run", str(path), "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "dpo" in out.stdout and "reversed" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("loss: dpo_norm", "loss: dpo_nrom"))
    out = subprocess.run([sys.executable, "-m", "deltalearn.cli", "run", str(bad), "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "did you mean 'dpo_norm'" in out.stderr
