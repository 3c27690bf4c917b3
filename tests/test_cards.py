"""The Hugging Face habits: model and dataset cards (their YAML parses and their numbers are the run's), the
final weights' dtype, --push-to-hub failing fast offline, trackers checked before training, pairs from a Hub id
and TRL's implicit-prompt rows, and TRL/transformers argument names in the did-you-mean."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from deltalearn import cards, hub
from deltalearn.io import DataError, read_json
from deltalearn.recipe import ConfigError, TrainConfig, load_recipe
from deltalearn.train import train


def cfg(model, tmp_path, **kw):
    base = dict(model=model, loss="dpo_norm", lr=1e-3, batch_size=4, micro_batch_size=2, max_len=128, max_steps=2,
                ref_cache_dir=str(tmp_path / "refcache"), precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "deltalearn.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_model_card_is_written_with_the_model_and_carries_the_runs_numbers(tiny_model_dir, toy_pairs, tmp_path):
    from deltalearn.pairs import save_pairs

    pairs_dir = save_pairs(toy_pairs, tmp_path / "pairs", summary={"rule": "ladder", "control": "none",
                                                                    "generation_sets": ["big", "small"]})
    out = tmp_path / "run"
    s = train(cfg(tiny_model_dir, tmp_path), str(pairs_dir), out, progress=False)
    text = (out / "model" / "README.md").read_text()
    meta = cards.front_matter(text)
    assert meta["library_name"] == "transformers" and "deltalearn" in meta["tags"] and "dpo_norm" in meta["tags"]
    d = meta["deltalearn"]
    summary = read_json(out / "train_summary.json")
    assert d["steps"] == summary["steps"] == 2 and d["pairs"] == summary["pairs"] == len(toy_pairs)
    assert d["final_loss"] == summary["final_loss"] == s["final_loss"] and d["beta"] == summary["beta"] == 5.0
    assert d["precision"] == "fp32" and d["saved_dtype"] == summary["saved_dtype"] == "fp32"
    assert d["pair_rule"] == "ladder" and d["pairs_source"] == str(pairs_dir)
    assert d["pairs_sha256"] == read_json(out / "train_config.json")["pairs_sha256"]
    assert "| final loss | " + cards._fmt(summary["final_loss"]) + " |" in text
    assert "| weights saved as | fp32 |" in text
    # the eval table once known
    cards.add_eval_results(out / "model", {"utility/bold_sections": {"mean": 2.5, "se": 0.25, "n": 8}})
    meta = cards.front_matter((out / "model" / "README.md").read_text())
    assert meta["deltalearn"]["eval"] == {"utility/bold_sections": 2.5} and meta["deltalearn"]["steps"] == 2
    assert "| utility/bold_sections | 2.5 | 0.25 | 8 |" in (out / "model" / "README.md").read_text()


def test_dataset_card_is_written_with_every_pair_set(tmp_path):
    gens = tmp_path / "gens.jsonl"
    gens.write_text("".join(json.dumps({"prompt": f"p{i}", "big": f"a long answer {i}", "small": f"short {i}"}) + "\n"
                            for i in range(5)))
    r = cli("pair", "--generations", str(gens), "--rule", "columns", "--chosen", "big", "--rejected", "small",
            "--out", str(tmp_path / "pairs"), "--stats", "--stats-utility", "response_words")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "pairs" / "README.md").read_text()
    meta = cards.front_matter(text)
    summary = read_json(tmp_path / "pairs" / "pair_summary.json")
    stats = read_json(tmp_path / "pairs" / "delta_stats.json")
    assert meta["deltalearn"]["pairs"] == summary["pairs"] == 5 and meta["deltalearn"]["rule"] == "columns"
    assert meta["deltalearn"]["delta_mean"] == stats["delta_mean"] and meta["size_categories"] == ["n<1K"]
    assert "## Delta statistics" in text and "| pairs with chosen better | 100% |" in text


def test_bf16_training_saves_bf16_weights_and_says_so(tiny_model_dir, toy_pairs, tmp_path):
    out = tmp_path / "bf16"
    s = train(cfg(tiny_model_dir, tmp_path, precision="bf16", max_steps=1), toy_pairs, out, progress=False)
    assert s["saved_dtype"] == "bf16"
    assert {v.dtype for v in load_file(str(out / "model" / "model.safetensors")).values()} == {torch.bfloat16}
    assert cards.front_matter((out / "model" / "README.md").read_text())["deltalearn"]["saved_dtype"] == "bf16"
    out32 = tmp_path / "bf16-saved-fp32"
    s = train(cfg(tiny_model_dir, tmp_path, precision="bf16", max_steps=1, save_dtype="fp32"), toy_pairs, out32,
              progress=False)
    assert s["saved_dtype"] == "fp32"
    assert {v.dtype for v in load_file(str(out32 / "model" / "model.safetensors")).values()} == {torch.float32}


def test_a_tracker_that_is_not_installed_refuses_the_run_before_training(tiny_model_dir, toy_pairs, tmp_path):
    from accelerate.utils.imports import is_tensorboard_available

    if is_tensorboard_available():
        pytest.skip("tensorboard is installed here")
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="tensorboard.*not installed: pip install tensorboard"):
        train(cfg(tiny_model_dir, tmp_path, log_with=["tensorboard"]), toy_pairs, out, progress=False)
    assert not out.exists()
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'"):
        train(cfg(tiny_model_dir, tmp_path, log_with=["tensorbord"]), toy_pairs, out, progress=False)


def test_tracker_project_is_the_recipe_name_not_main(tmp_path):
    from deltalearn.trackers import tracker_names

    assert tracker_names(tmp_path / "runs" / "sections" / "arms" / "main", None, None) == ("sections", "main")
    assert tracker_names(tmp_path / "my-run", None, None) == ("my-run", "my-run")
    assert tracker_names(tmp_path / "x" / "arms" / "a", "proj", "r1") == ("proj", "r1")


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"},
                                 {"HF_TOKEN": "hf_fake", "HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_push_to_hub_fails_fast_before_any_work(tiny_model_dir, toy_pairs, tmp_path, env):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs))
    t0 = time.time()
    r = cli("train", "--pairs", str(pairs), "--out", str(tmp_path / "run"), "--model", tiny_model_dir,
            "--set", "train.precision=fp32", "--push-to-hub", "me/model", env=env)
    assert r.returncode == 2 and "--push-to-hub me/model" in r.stderr and "nothing was run" in r.stderr, r.stderr
    assert ("HF_HUB_OFFLINE" in r.stderr) if "HF_HUB_OFFLINE" in env else ("not reachable" in r.stderr)
    assert not (tmp_path / "run").exists() and time.time() - t0 < 60
    r = cli("pair", "--generations", str(pairs), "--rule", "columns", "--chosen", "chosen", "--rejected",
            "rejected", "--out", str(tmp_path / "p"), "--push-to-hub", "me/pairs", env=env)
    assert r.returncode == 2 and "nothing was run" in r.stderr and not (tmp_path / "p").exists(), r.stderr


def test_pairs_from_a_hub_id_are_loaded_from_the_hub(tmp_path, monkeypatch):
    """The routing: ORG/NAME that is not on disk goes to datasets.load_dataset; offline, a clear message."""
    from deltalearn.train import load_pair_rows

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"trl-lib/ultrafeedback_binarized: could not load split 'test' of this Hub "
                                        r"dataset \(the Hub is switched off"):
        load_pair_rows("trl-lib/ultrafeedback_binarized", "dpo", "test")
    assert hub.is_hub_dataset_id("org/name") and not hub.is_hub_dataset_id("dir/pairs.jsonl")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert not hub.is_hub_dataset_id("org/name")  # a folder of that name on disk wins


def test_trl_implicit_prompt_rows_are_split_at_the_shared_messages(tiny_model_dir, tmp_path):
    user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    rows = [{"chosen": user + [{"role": "assistant", "content": f"Blue {i}."}],
             "rejected": user + [{"role": "assistant", "content": f"A colour {i}."}]} for i in range(4)]
    split = hub.split_implicit_prompt(rows)
    assert split[0]["prompt"] == user and split[0]["chosen"] == [{"role": "assistant", "content": "Blue 0."}]
    s = train(cfg(tiny_model_dir, tmp_path, max_steps=1), rows, tmp_path / "run", progress=False)
    assert s["pairs"] == 4
    with pytest.raises(DataError, match="row 1, field 'prompt': no prompt column"):
        hub.split_implicit_prompt([{"chosen": [{"role": "user", "content": "a"}],
                                    "rejected": [{"role": "user", "content": "b"}]}], "x.jsonl")


@pytest.mark.parametrize("key,target", [("learning_rate", "train.lr"), ("num_train_epochs", "train.epochs"),
                                        ("per_device_train_batch_size", "train.micro_batch_size"),
                                        ("gradient_accumulation_steps", "train.batch_size"),
                                        ("max_length", "train.max_len")])
def test_trl_argument_names_get_a_did_you_mean(key, target, tmp_path):
    with pytest.raises(ConfigError, match=rf"did you mean {target}\b.*'{key}' is the TRL/transformers name"):
        load_recipe(None, [f"train.{key}=1"])
    from deltalearn.train import train_overrides_only

    with pytest.raises(ConfigError, match=rf"--set {key}=1: .*did you mean {target}\b"):
        train_overrides_only([f"{key}=1"])  # `deltalearn train --set learning_rate=1e-6`


def test_train_help_shows_every_default():
    """Every value-taking flag of `train --help` states its default (argparse's own, or the recipe's in words)."""
    import argparse

    from deltalearn.cli import DefaultsHelpFormatter
    from deltalearn.train import add_cli_args

    p = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    add_cli_args(p)
    fmt = DefaultsHelpFormatter("train")
    missing = [a.option_strings[0] for a in p._actions if a.option_strings and a.nargs != 0 and not a.required
               and "default" not in fmt._get_help_string(a)]
    assert missing == []
