"""`import deltalearn as dl`: the functions the CLI calls, on a tiny model (default suite), and the README's
example as written on the embedded SmolLM2."""

import json
import math
import os
import re
from pathlib import Path

import pytest

import deltalearn as dl
from deltalearn.recipe import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_generate_pair_train_evaluate_on_a_tiny_model(tiny_model_dir, toy_pairs, tmp_path):
    prompts = [{"id": f"p{i}", "prompt": r["prompt"]} for i, r in enumerate(toy_pairs)]
    kw = dict(max_new_tokens=4, precision="fp32", progress=False)
    a = dl.generate(tiny_model_dir, prompts, tmp_path / "gen" / "a.jsonl", **kw)
    b = dl.generate(tiny_model_dir, prompts, tmp_path / "gen" / "b.jsonl", temperature=1.0, seed=3, **kw)
    assert [r["id"] for r in a] == [p["id"] for p in prompts]
    half = dl.generate(tiny_model_dir, prompts, None, shard="1/2", **kw)
    assert 0 < len(half) < len(prompts)

    # A random tiny model writes whitespace or token soup, which pairing rightly drops: pair real texts on the
    # generated rows (ids, prompts and provenance stay the generator's).
    a = [{**r, "response": t["chosen"][0]["content"]} for r, t in zip(a, toy_pairs)]
    b = [{**r, "response": t["rejected"][0]["content"]} for r, t in zip(b, toy_pairs)]
    pairs, summary = dl.make_pairs({"a": a, "b": b}, tmp_path / "pairs", rule="columns", chosen="a", rejected="b",
                                   drop_truncated=False)
    assert len(pairs) == summary["pairs"] == len(prompts) and (tmp_path / "pairs" / "pairs.jsonl").exists()

    result = dl.train(tmp_path / "pairs", tmp_path / "run", model=tiny_model_dir, lr=1e-3, batch_size=4,
                      micro_batch_size=2, max_steps=1, precision="fp32", ref_cache_dir=str(tmp_path / "rc"),
                      progress=False)
    assert result["steps"] == 1 and result["final_loss"] == pytest.approx(math.log(2), abs=1e-5)

    ev = dl.evaluate(result["model_dir"], tmp_path / "run", pairs=str(tmp_path / "pairs"), label="tuned",
                     precision="fp32", progress=False)
    assert (tmp_path / "run" / "eval" / "tuned.json").exists() and ev == json.loads(
        (tmp_path / "run" / "eval" / "tuned.json").read_text())

    with pytest.raises(ConfigError, match="train: unknown setting 'learning_rate'; valid: .*lr"):
        dl.train(pairs, tmp_path / "x", model=tiny_model_dir, learning_rate=1e-3)


def readme_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README has no <!-- api-example --> python block"
    return m.group(1)


def test_readme_example_is_python_and_uses_the_api():
    code = readme_example()
    compile(code, "README example", "exec")
    for f in ("dl.generate", "dl.make_pairs", "dl.train", "dl.evaluate"):
        assert f in code


def test_readme_example_runs_on_the_embedded_model(tmp_path, smollm2_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(os.environ, "TOKENIZERS_PARALLELISM", "false")
    scope: dict = {}
    exec(readme_example(), scope)
    assert (tmp_path / "runs" / "api" / "train" / "model" / "model.safetensors").exists()
    assert (tmp_path / "runs" / "api" / "eval").is_dir()
