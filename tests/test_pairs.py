"""Pairing: every rule, both controls, every filter counted, the formats in and out, delta statistics, the judge
on the real SmolLM2, and a pairs dataset training one step in TRL's DPOTrainer unchanged."""

import json
import os
import subprocess
import sys

import pytest

from deltalearn.io import DataError, read_table
from deltalearn.pairs import (delta_stats, format_stats, judge_scores, load_generations, make_pairs, parse_score,
                              save_pairs)
from deltalearn.recipe import ConfigError, PairConfig

PROMPTS = {f"p{i}": f"Question {i}?" for i in range(6)}


def gen(label, responses, truncated=()):
    return [{"id": pid, "prompt": PROMPTS[pid], "response": text, "model": label, "n_tokens": 5,
             "truncated": pid in truncated} for pid, text in responses.items()]


@pytest.fixture
def ladder():
    """Three rungs; p1 is empty for 'small', p2 truncated for 'mid', p3 identical for big/mid, p5 only in big."""
    big = gen("big", {"p0": "**A**\n**B**\n**C**", "p1": "**A**\nbig1", "p2": "big2", "p3": "same", "p4": "**A**",
                      "p5": "big5"})
    mid = gen("mid", {"p0": "**A**\n**B**", "p1": "mid1", "p2": "mid2 cut", "p3": "same", "p4": "**A**"},
              truncated={"p2"})
    small = gen("small", {"p0": "**A**", "p1": "  ", "p2": "small2", "p3": "small3", "p4": "**B**"})
    return {"big": big, "mid": mid, "small": small}


SIZES = {"big": 3e9, "mid": 1.5e9, "small": 0.5e9}


def test_ladder_adjacent_and_filters_counted(ladder):
    pairs, s = make_pairs(ladder, PairConfig(rule="ladder", sizes=SIZES))
    got = {(p["prompt_id"], p["chosen_model"], p["rejected_model"]) for p in pairs}
    assert got == {("p0", "big", "mid"), ("p1", "big", "mid"),
                   ("p0", "mid", "small"), ("p3", "mid", "small"), ("p4", "mid", "small")}
    # Every candidate (6 prompts x 2 rung pairs) is either a pair or counted under one reason.
    assert s["dropped"]["missing"] == 2  # p5 in big only: big>mid and mid>small
    assert s["dropped"]["empty"] == 1  # p1 small
    assert s["dropped"]["truncated"] == 2  # p2 mid, on both rung pairs
    assert s["dropped"]["identical"] == 2  # p3 and p4: big == mid
    assert s["pairs"] + sum(s["dropped"].values()) == 12
    p = next(p for p in pairs if p["prompt_id"] == "p0" and p["chosen_model"] == "big")
    assert p["id"] == "p0:big>mid"  # several rung pairs per prompt -> composite ids, still unique
    assert p["prompt"] == [{"role": "user", "content": "Question 0?"}]
    assert p["chosen"] == [{"role": "assistant", "content": "**A**\n**B**\n**C**"}]
    assert p["rejected"] == [{"role": "assistant", "content": "**A**\n**B**"}]
    assert (p["rule"], p["chosen_size"], p["rejected_size"], p["control"]) == ("ladder", 3e9, 1.5e9, "none")
    assert len({p["id"] for p in pairs}) == len(pairs)


def test_ladder_all_pairs_keep_truncated_and_reverse(ladder):
    pairs, s = make_pairs(ladder, PairConfig(rule="ladder", sizes=SIZES, adjacent=False, drop_truncated=False))
    assert s["model_pairs"] == {"big > mid": 3, "big > small": 4, "mid > small": 4}
    assert s["dropped"]["truncated"] == 0
    rev, rs = make_pairs(ladder, PairConfig(rule="ladder", sizes=SIZES, adjacent=False, drop_truncated=False,
                                            control="reverse"))
    assert len(rev) == len(pairs)
    for a, b in zip(pairs, rev):
        assert (a["chosen"], a["rejected"], a["chosen_model"]) == (b["rejected"], b["chosen"], b["rejected_model"])
        assert b["chosen_size"] < b["rejected_size"] and b["control"] == "reverse"


def test_ladder_sizes_from_the_model_and_errors(ladder, smollm2_dir):
    two = {"smollm2-135m": gen("smollm2-135m", {"p0": "x"}), "tiny": gen("tiny", {"p0": "y"})}
    pairs, s = make_pairs(two, PairConfig(rule="ladder", sizes={"tiny": 1e6}))
    assert 1.3e8 < s["sizes"]["smollm2-135m"] < 1.4e8  # read from the config, no weights loaded
    assert pairs[0]["chosen_model"] == "smollm2-135m"
    nowhere = {"./no-such-model": gen("./no-such-model", {"p0": "z"}), "tiny": two["tiny"]}
    with pytest.raises(ConfigError, match="cannot read the size of './no-such-model'.*not found.*state it"):
        make_pairs(nowhere, PairConfig(rule="ladder", sizes={"tiny": 1e6}))
    with pytest.raises(ConfigError, match="same size"):
        make_pairs(ladder, PairConfig(rule="ladder", sizes={"big": 1, "mid": 1, "small": 0}))
    with pytest.raises(ConfigError, match="at least two"):
        make_pairs({"big": ladder["big"]}, PairConfig(rule="ladder", sizes=SIZES))


def test_ladder_tie_pairs_equal_rungs_with_random_orientation():
    a = gen("run1", {p: f"sample one {p}" for p in PROMPTS})
    b = gen("run2", {p: f"sample two {p}" for p in PROMPTS} | {"p0": "sample one p0"})
    pairs, s = make_pairs({"run1": a, "run2": b}, PairConfig(rule="ladder", sizes={"run1": 1, "run2": 1},
                                                             control="tie"))
    assert s["pairs"] == 5 and s["dropped"]["identical"] == 1
    assert {p["chosen_model"] for p in pairs} == {"run1", "run2"}  # both orientations occur (seeded)
    again, _ = make_pairs({"run1": a, "run2": b}, PairConfig(rule="ladder", sizes={"run1": 1, "run2": 1},
                                                             control="tie"))
    assert again == pairs
    # each pair's side is its own coin: dropping a prompt, or reordering the rows, reorients no other pair
    side = {p["prompt_id"]: p["chosen_model"] for p in pairs}
    fewer, _ = make_pairs({"run1": a[::-1][1:], "run2": b[::-1]},
                          PairConfig(rule="ladder", sizes={"run1": 1, "run2": 1}, control="tie"))
    assert len(fewer) == 4 and all(side[p["prompt_id"]] == p["chosen_model"] for p in fewer)
    with pytest.raises(ConfigError, match="tie.*equal size"):
        make_pairs({"run1": a, "run2": b}, PairConfig(rule="ladder", sizes={"run1": 2, "run2": 1}, control="tie"))


def test_self_vs_weaker_and_columns(ladder):
    pairs, s = make_pairs(ladder, PairConfig(rule="self_vs_weaker", student="small", weaker="big"))
    assert {p["chosen_model"] for p in pairs} == {"small"} and s["dropped"]["empty"] == 1
    two = {k: ladder[k] for k in ("mid", "small")}
    auto, _ = make_pairs(two, PairConfig(rule="self_vs_weaker", student="mid"))  # the only other set is weaker
    assert {(p["chosen_model"], p["rejected_model"]) for p in auto} == {("mid", "small")}
    with pytest.raises(ConfigError, match="student.*did you mean 'small'"):
        make_pairs(ladder, PairConfig(rule="self_vs_weaker", student="smal", weaker="big"))
    with pytest.raises(ConfigError, match="undefined"):
        make_pairs(ladder, PairConfig(rule="self_vs_weaker", student="small", control="tie"))
    cols, _ = make_pairs(ladder, PairConfig(rule="columns", chosen="small", rejected="mid", drop_truncated=False))
    assert {p["prompt_id"] for p in cols} == {"p0", "p2", "p3", "p4"}
    assert all(p["id"] == p["prompt_id"] for p in cols)  # one pair per prompt -> the prompt id
    with pytest.raises(ConfigError, match="pair.rejected is required"):
        make_pairs(ladder, PairConfig(rule="columns", chosen="small"))
    tied, _ = make_pairs(ladder, PairConfig(rule="columns", chosen="big", rejected="small", control="tie"))
    assert {p["chosen_model"] for p in tied} == {"big", "small"}


def test_utility_rule_margin_and_tie(ladder):
    pairs, s = make_pairs(ladder, PairConfig(rule="utility", utility="bold_sections"))
    by = {p["prompt_id"]: p for p in pairs}
    assert by["p0"]["chosen_model"] == "big" and by["p0"]["rejected_model"] == "small"
    assert (by["p0"]["chosen_score"], by["p0"]["rejected_score"]) == (3.0, 1.0)
    assert by["p1"]["chosen_model"] == "big" and by["p1"]["rejected_model"] == "mid"  # small's empty one excluded
    assert s["responses_excluded"] == {"empty": 1, "truncated": 1}
    assert s["dropped"]["below_margin"] == 3  # p2, p3 all 0 sections; p4 all 1
    assert s["dropped"]["missing"] == 1  # p5: one response only
    strict, s2 = make_pairs(ladder, PairConfig(rule="utility", utility="bold_sections", min_margin=1.0))
    assert [p["prompt_id"] for p in strict] == ["p0"] and s2["dropped"]["below_margin"] == 4
    # tie: two different responses with equal utility (p4: "**A**" vs "**B**"; p2/p3 have distinct 0-scored ones;
    # p0 (3/2/1 sections) and p1 (1/0, the third empty) have none)
    tie, s3 = make_pairs(ladder, PairConfig(rule="utility", utility="bold_sections", control="tie"))
    assert all(p["chosen_score"] == p["rejected_score"] for p in tie)
    assert all(p["chosen"] != p["rejected"] for p in tie)
    assert {p["prompt_id"] for p in tie} == {"p2", "p3", "p4"} and s3["dropped"]["no_tie"] == 2
    with pytest.raises(ConfigError, match="unknown utility 'bold'"):
        make_pairs(ladder, PairConfig(rule="utility", utility="bold"))


def test_utility_exact_answer_uses_reference():
    a = [{"id": "q", "prompt": "2+2?", "response": "Answer: 4", "reference": "4"}]
    b = [{"id": "q", "prompt": "2+2?", "response": "Answer: 5", "reference": "4"}]
    pairs, _ = make_pairs({"a": b, "b": a}, PairConfig(rule="utility", utility="exact_answer"))
    assert pairs[0]["chosen_model"] == "b" and pairs[0]["reference"] == "4"


def test_parse_score():
    assert parse_score("Score: 4. The answer is good.") == 4
    assert parse_score("**Rating:** 2 because ...") == 2
    assert parse_score("I would give it a score of 5") == 5
    assert parse_score("This deserves 3/5.") == 3
    assert parse_score("4 out of 5, mostly right") == 4
    assert parse_score("3\nThe answer is partly right.") == 3
    assert parse_score("Score: 10") is None and parse_score("It is 2.5 stars") is None
    assert parse_score("The answer mentions 7 colors.") is None and parse_score("") is None


def test_judge_rule_and_stats_with_smollm2_as_judge(tmp_path):
    """Mechanics only: the 135M judge's opinions are poor; every response is scored or counted unscored."""
    gens = {"good": gen("good", {"p0": "2 + 2 = 4.", "p1": "Red, green and blue."}),
            "bad": gen("bad", {"p0": "Bananas are yellow.", "p1": ""})}
    out = tmp_path / "judge.jsonl"
    scores = judge_scores(gens, "smollm2-135m", out_path=out, max_new_tokens=24, progress=False)
    assert set(scores) == {("good", "p0"), ("good", "p1"), ("bad", "p0")}  # the empty response is not judged
    assert all(v is None or 1 <= v <= 5 for v in scores.values())
    raw = read_table(out)
    assert len(raw) == 3 and all("Score" in r["prompt"] for r in raw)
    pairs, s = make_pairs(gens, PairConfig(rule="judge", judge="smollm2-135m"), scores=scores)
    assert s["dropped"]["empty"] == 1  # p1: 'bad' is empty, so only one scorable response
    assert s["pairs"] + sum(s["dropped"].values()) == 2
    for p in pairs:
        assert p["chosen_score"] > p["rejected_score"]
    st = delta_stats(pairs, scores=scores, sizes={"good": 2, "bad": 1})
    assert st["scored"] == len(pairs)
    fixed = {("good", "p0"): 5, ("bad", "p0"): 2, ("good", "p1"): 4}
    p2, _ = make_pairs(gens, PairConfig(rule="judge"), scores=fixed)
    assert [(p["prompt_id"], p["chosen_model"], p["chosen_score"]) for p in p2] == [("p0", "good", 5.0)]


def test_delta_stats_and_size_agreement():
    def pair(pid, c, r, cm="big", rm="small"):
        return {"id": pid, "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}], "chosen_model": cm, "rejected_model": rm,
                "chosen_size": 2.0 if cm == "big" else 1.0, "rejected_size": 2.0 if rm == "big" else 1.0}

    pairs = [pair("a", "**A**\n**B**", "**A**"), pair("b", "**A**", "**A**\n**B**\n**C**"), pair("c", "x", "y"),
             pair("d", "**A**\n**B**", "none")]
    s = delta_stats(pairs, utility="bold_sections")
    assert s["scored"] == 4 and s["chosen_mean"] == 1.25 and s["rejected_mean"] == 1.0
    assert s["delta_mean"] == pytest.approx(0.25)
    assert (s["positive"], s["zero"], s["negative"]) == (0.5, 0.25, 0.25)
    lo, hi = s["delta_ci95"]
    assert lo < 0.25 < hi and hi - lo == pytest.approx(2 * 1.96 * s["delta_se"])
    assert s["size_agreement"] == 0.5 and s["size_ties"] == 0.25
    assert s["size_agreement_excl_ties"] == pytest.approx(2 / 3)
    # Reversed pairs: the size heuristic is judged on sizes, not on which side is "chosen".
    rev = [pair(p["id"], p["rejected"][0]["content"], p["chosen"][0]["content"], "small", "big") for p in pairs]
    r = delta_stats(rev, utility="bold_sections")
    assert r["delta_mean"] == pytest.approx(-0.25) and r["size_agreement"] == 0.5
    assert "95% CI" in format_stats(s) and "size heuristic agrees" in format_stats(s)


def test_wide_format_and_long_files(tmp_path):
    wide = [{"prompt": "Q1", "qwen-3b": "long answer 1", "qwen-0.5b": "short 1", "source": "x"},
            {"prompt": "Q2", "qwen-3b": "long answer 2", "qwen-0.5b": None, "source": "x"}]
    p = tmp_path / "wide.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in wide))
    g = load_generations(p)
    assert set(g) == {"qwen-3b", "qwen-0.5b"} and len(g["qwen-0.5b"]) == 1
    pairs, s = make_pairs(g, PairConfig(rule="ladder", sizes={"qwen-3b": 3e9, "qwen-0.5b": 5e8}))
    assert len(pairs) == 1 and s["dropped"]["missing"] == 1
    import datasets

    datasets.Dataset.from_list(wide).save_to_disk(str(tmp_path / "wide_ds"))
    assert load_generations(tmp_path / "wide_ds", models=["qwen-3b", "qwen-0.5b"])["qwen-3b"] == g["qwen-3b"]
    with pytest.raises(DataError, match=r"no column 'promt'.*did you mean 'prompt'"):
        load_generations(p, prompt_column="promt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q", "a": "x", "b": 3}) + "\n")
    with pytest.raises(DataError, match=r"at least two response columns"):
        load_generations(bad)
    with pytest.raises(DataError, match=r"row 1.*field 'b'.*must be a string"):
        load_generations(bad, models=["a", "b"])


def test_save_load_and_export(ladder, tmp_path):
    import datasets

    pairs, s = make_pairs(ladder, PairConfig(rule="ladder", sizes=SIZES))
    out = save_pairs(pairs, tmp_path / "pairs", summary=s, export=("jsonl", "parquet"))
    ds = datasets.load_from_disk(str(out))
    assert ds.to_list() == pairs
    assert json.loads((out / "pair_summary.json").read_text())["pairs"] == len(pairs)
    assert read_table(out / "pairs.jsonl") == pairs  # exports live inside the output folder (issue 17)
    assert read_table(out / "pairs.parquet")[0]["chosen"] == pairs[0]["chosen"]
    # Saving again replaces the dataset whole; no temporary folders are left behind.
    save_pairs(pairs[:2], out)
    assert len(datasets.load_from_disk(str(out))) == 2
    assert sorted(x.name for x in tmp_path.iterdir()) == ["pairs"]
    with pytest.raises(DataError, match="no pairs"):
        save_pairs([], tmp_path / "none", summary={"pairs": 0})


def test_cli_on_generation_folders(tmp_path):
    from deltalearn.io import JsonlAppender, write_json_atomic

    folder = tmp_path / "generations"
    for label, rows in {"big": [{"id": "a", "prompt": "Q", "response": "**A**\n**B**", "model": "big"},
                                {"id": "b", "prompt": "R", "response": "**A**", "model": "big"}],
                        "small": [{"id": "a", "prompt": "Q", "response": "**A**", "model": "small"},
                                  {"id": "b", "prompt": "R", "response": "none", "model": "small"}]}.items():
        with JsonlAppender(folder / f"{label}.jsonl") as f:
            for r in rows:
                f.write(r)
        write_json_atomic(folder / f"{label}.meta.json", {"model": label})
    out = tmp_path / "pairs"
    # bars on, whatever an earlier in-process `--no-progress` left in this process's environment
    loud = {k: v for k, v in os.environ.items()
            if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")}
    r = subprocess.run([sys.executable, "-m", "deltalearn.cli", "pair", "--generations", str(folder), "--rule", "ladder",
                        "--sizes", "big=2", "small=1", "--out", str(out), "--stats", "--stats-utility",
                        "bold_sections", "--export", "jsonl"], capture_output=True, text=True, timeout=300, env=loud)
    assert r.returncode == 0, r.stderr
    assert '"pairs": 2' in r.stdout and "delta statistics: 2 pairs scored by bold_sections" in r.stdout
    assert "size heuristic agrees (bigger model scores higher): 100.0% of 2 pairs" in r.stdout
    assert json.loads((out / "delta_stats.json").read_text())["delta_mean"] == 1.0
    assert len(read_table(out / "pairs.jsonl")) == 2 and f"{out / 'pairs.jsonl'}" in r.stderr
    assert "Saving the dataset" in r.stderr  # datasets' bar, which --no-progress silences like every other command's
    r = subprocess.run([sys.executable, "-m", "deltalearn.cli", "pair", "--generations", str(folder), "--rule", "ladder",
                        "--sizes", "big=2", "small=1", "--out", str(tmp_path / "quiet"), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Saving the dataset" not in r.stderr and "it/s" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "deltalearn.cli", "pair", "--generations", str(folder), "--rule",
                        "columns", "--chosen", "bigg", "--rejected", "small"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "did you mean 'big'" in r.stderr
    # errors name the flags the user typed, not recipe keys
    r = subprocess.run([sys.executable, "-m", "deltalearn.cli", "pair", "--generations", str(folder), "--rule",
                        "columns", "--chosen", "big"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--rejected is required" in r.stderr and "pair.rejected" not in r.stderr


def test_pairs_dataset_trains_one_step_in_trl(ladder, tmp_path, smollm2_dir):
    """The saved dataset goes into TRL's DPOTrainer unchanged (provenance columns included)."""
    pytest.importorskip("trl")
    import datasets
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    pairs, s = make_pairs(ladder, PairConfig(rule="ladder", sizes=SIZES))
    out = save_pairs(pairs, tmp_path / "pairs", summary=s)
    # A tiny random Llama with SmolLM2's tokenizer, saved to a folder (TRL builds its reference model from it).
    from conftest import build_tiny_llama

    path = build_tiny_llama(tmp_path / "tiny", smollm2_dir, hidden=32)
    tok = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path)
    before = [p.detach().clone() for p in model.parameters()]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2,
                     learning_rate=1e-2, report_to=[], logging_steps=1, save_strategy="no", use_cpu=True,
                     max_length=64, bf16=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.load_from_disk(str(out)),
                         processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_generation_folder_labels(tmp_path):
    """<slug>.jsonl is labelled by its model's name; a --label'ed file (same model, other settings) by its name."""
    from deltalearn.io import JsonlAppender, write_json_atomic

    for stem, model in (("smollm2-135m", "smollm2-135m"), ("smollm2-135m-t1.2", "smollm2-135m"), ("lab_s", "lab:s")):
        with JsonlAppender(tmp_path / f"{stem}.jsonl") as f:
            f.write({"id": "a", "prompt": "Q", "response": stem, "model": model})
        write_json_atomic(tmp_path / f"{stem}.meta.json", {"model": model})
    g = load_generations(tmp_path)
    assert sorted(g) == ["lab:s", "smollm2-135m", "smollm2-135m-t1.2"]
    assert g["smollm2-135m-t1.2"][0]["response"] == "smollm2-135m-t1.2"
