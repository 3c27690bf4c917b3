"""Evaluation on the real embedded model (SmolLM2-135M) with a couple of prompts, and the bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deltalearn.evaluate import (EVALUATOR_VERSION, check_model_tokenizer, evaluate_model, evaluate_run,
                                 judge_scores, load_eval_pairs, parse_verdict, utility_scores, win_scores)
from deltalearn.io import DataError
from deltalearn.lmeval import TULU3_DEV, expand_tasks, preset_average
from deltalearn.recipe import ConfigError, EvalConfig, PromptsConfig

PROMPTS = [{"id": "p1", "prompt": "Give me two tips for sleeping better.", "reference": "2"},
           {"id": "p2", "prompt": "What is 20 + 22? Reply with the number only.", "reference": "42"}]
PAIRS = [{"id": "a", "prompt": "What is the capital of France?", "chosen": "The capital of France is Paris.",
          "rejected": "The capital of France is Berlin."},
         {"id": "b", "prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4.", "rejected": "2 + 2 = 5."}]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_utility_scores_per_item():
    rows = [{"id": "1", "response": "**Plan**\nDo it.\n\n**Check**\nAnswer: 42", "n_tokens": 12, "truncated": False,
             "reference": "42"},
            {"id": "2", "response": "no headers, answer 7", "n_tokens": 5, "truncated": True, "reference": "8"}]
    s = utility_scores(rows, ["bold_sections", "exact_answer"])
    assert s["utility/bold_sections"] == [2.0, 0.0]
    assert s["utility/exact_answer"] == [1.0, 0.0]
    assert s["length/tokens"] == [12.0, 5.0] and s["truncated"] == [0.0, 1.0]


def test_exact_answer_without_reference_names_the_row():
    rows = [{"id": "1", "response": "42", "reference": "42"}, {"id": "2", "response": "7"}]
    with pytest.raises(DataError, match=r"prompts.jsonl, row 2, field 'reference'"):
        utility_scores(rows, ["exact_answer"], source="prompts.jsonl")


def test_judge_verdict_parsing():
    assert parse_verdict("A") == "A" and parse_verdict("B.") == "B" and parse_verdict("Response B is better") == "B"
    assert parse_verdict("Both are fine") is None and parse_verdict("") is None
    assert parse_verdict("The correct response is:\n\n[Response B]") == "B"
    assert parse_verdict("A. It is more complete") == "A"
    assert parse_verdict("B is better than A") == "B"  # a leading letter is the verdict
    assert parse_verdict("I think a B grade fits, but A...") is None  # two lone letters: ambiguous


def test_position_swap_cancels_order_bias():
    always_first = win_scores([("A", "A")] * 3)
    assert always_first["judge/win_rate"] == [0.5] * 3 and always_first["judge/first_position_rate"] == [1.0] * 6
    consistent = win_scores([("A", "B"), ("B", "A"), ("A", None)])
    assert consistent["judge/win_rate"] == [1.0, 0.0, 0.75]  # win, loss, win + unreadable (counted as a tie)
    assert consistent["judge/invalid"] == [0.0, 0.0, 0.5]


def test_eval_pairs_errors(tmp_path):
    bad = _write(tmp_path / "pairs.jsonl", [PAIRS[0], {"prompt": "x", "chosen": "y"}])
    with pytest.raises(DataError, match=r"pairs.jsonl, row 2, field 'rejected'"):
        load_eval_pairs(bad)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no eval pairs"):
        load_eval_pairs(str(tmp_path / "empty.jsonl"))


def test_empty_eval_prompts_are_an_error(tmp_path):
    (tmp_path / "p.jsonl").write_text("\n")
    cfg = EvalConfig(prompts=PromptsConfig(path=str(tmp_path / "p.jsonl")), utilities=["bold_sections"])
    with pytest.raises(DataError, match="p.jsonl.*empty"):
        evaluate_model("smollm2-135m", cfg, tmp_path)
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        evaluate_model("smollm2-135m", EvalConfig(), tmp_path)


def test_tulu3_preset_names_the_suite():
    run, external = expand_tasks(["preset:tulu3-dev"])
    assert len(TULU3_DEV) == 11
    assert {"mmlu", "gsm8k_cot", "minerva_math", "ifeval", "bbh_cot_fewshot", "drop", "truthfulqa_mc2",
            "humaneval", "humaneval_plus"} == set(run)
    assert {e["benchmark"] for e in external} == {"AlpacaEval 2", "PopQA"}
    with pytest.raises(ConfigError, match="unknown lm-eval preset"):
        expand_tasks(["preset:nope"])
    # The suite average uses each benchmark's headline metric and names what it left out.
    metrics = {"lm_eval/mmlu/acc": {"mean": 0.6, "se": 0.03}, "lm_eval/gsm8k_cot/exact_match[flexible-extract]":
               {"mean": 0.8, "se": 0.04}, "lm_eval/gsm8k_cot/exact_match[strict-match]": {"mean": 0.1, "se": 0.1}}
    avg = preset_average("tulu3-dev", metrics)
    assert avg["mean"] == pytest.approx(0.7) and avg["se"] == pytest.approx(0.025) and avg["n"] == 2
    assert avg["benchmarks"] == ["MMLU", "GSM8K"] and "AlpacaEval 2" in avg["missing"]


def test_eval_smollm2_utilities_lengths_and_pairs(tmp_path):
    cfg = EvalConfig(prompts=PromptsConfig(path=_write(tmp_path / "prompts.jsonl", PROMPTS), id_column="id"),
                     utilities=["bold_sections", "exact_answer"], max_new_tokens=12, batch_size=2,
                     pairs=_write(tmp_path / "pairs.jsonl", PAIRS))
    res = evaluate_model("smollm2-135m", cfg, tmp_path / "run", label="base", progress=False)
    saved = json.loads((tmp_path / "run" / "eval" / "base.json").read_text())
    assert saved["evaluator"]["version"] == EVALUATOR_VERSION and saved["settings"]["max_new_tokens"] == 12
    m = res["metrics"]
    for k in ("utility/bold_sections", "utility/exact_answer", "length/tokens", "pref/logp_accuracy"):
        assert m[k]["n"] == 2 and m[k]["se"] is not None
    assert 0 < m["length/tokens"]["mean"] <= 12
    assert saved["items"]["ids"]["utility/bold_sections"] == ["p1", "p2"]
    # The model prefers the true statement on both facts (per-token mean log-probs).
    assert m["pref/logp_accuracy"]["mean"] == 1.0 and m["pref/logp_margin"]["mean"] > 0
    # Greedy responses are on disk and a rerun resumes from them (same numbers, no regeneration).
    lines = (tmp_path / "run" / "eval" / "base.responses.jsonl").read_text().splitlines()
    assert len(lines) == 2
    res2 = evaluate_model("smollm2-135m", EvalConfig(prompts=cfg.prompts, utilities=["bold_sections"],
                                                      max_new_tokens=12, batch_size=2),
                          tmp_path / "run", label="base", progress=False)
    assert res2["metrics"]["length/tokens"] == m["length/tokens"]
    # The same eval again is recognized by its fingerprint and not redone.
    again = evaluate_model("smollm2-135m", EvalConfig(prompts=cfg.prompts, utilities=["bold_sections"],
                                                       max_new_tokens=12, batch_size=2),
                           tmp_path / "run", label="base", progress=False)
    assert again == res2  # same created time and wall_s: read back, not recomputed


def test_checkpoint_tokenizer_mismatch_is_refused():
    from deltalearn.models import load_model

    model, tok = load_model("smollm2-135m")
    check_model_tokenizer(model, tok, "smollm2-135m")
    tok.add_tokens([f"<extra_{i}>" for i in range(8)])
    with pytest.raises(DataError, match="checkpoint and tokenizer do not match"):
        check_model_tokenizer(model, tok, "runs/x/arms/a/model")


def test_eval_run_needs_trained_arms(tmp_path):
    (tmp_path / "arms").mkdir()
    with pytest.raises(DataError, match="no trained arm"):
        evaluate_run(tmp_path, EvalConfig(utilities=["bold_sections"]))
    with pytest.raises(DataError, match="run folder not found"):
        evaluate_run(tmp_path / "missing")


@pytest.mark.slow
def test_eval_run_base_and_arm_with_judge(tmp_path):
    """--run: base + every arm (here an 'arm' that is the base weights), judged with position swap."""
    from deltalearn.cli import main
    from deltalearn.models import local_folder

    run = tmp_path / "run"
    (run / "arms" / "same").mkdir(parents=True)
    (run / "arms" / "same" / "model").symlink_to(local_folder("smollm2-135m"))
    recipe = {"name": "r", "train": {"model": "smollm2-135m", "loss": "dpo_norm", "beta": 5},
              "eval": {"prompts": {"path": _write(tmp_path / "p.jsonl", PROMPTS)}, "utilities": ["bold_sections"],
                       "max_new_tokens": 12, "batch_size": 2, "judge": "smollm2-135m"}}
    (run / "manifest.json").write_text(json.dumps({"recipe": recipe}))
    assert main(["eval", "--run", str(run), "--no-progress"]) == 0
    arm = json.loads((run / "eval" / "same.json").read_text())
    assert arm["settings"]["judge_position_swap"] is True
    # Identical weights give identical greedy responses; a judge that picks by content alone scores 0.5.
    assert arm["metrics"]["judge/win_rate"]["n"] == 2
    assert 0 <= arm["metrics"]["judge/win_rate"]["mean"] <= 1


def test_lm_eval_bridge_on_a_local_task(tmp_path, monkeypatch, capfd):
    """lm-evaluation-harness on the embedded model with the project's own local YAML task (no hub), run from a
    folder that is not a git checkout: lm-eval's `git describe` no longer prints `fatal: not a git repository`."""
    pytest.importorskip("lm_eval")
    from deltalearn.lmeval import run_lm_eval

    monkeypatch.chdir(tmp_path)
    res = run_lm_eval("smollm2-135m", ["local:tiny_facts"], limit=8, batch_size=16)
    assert "not a git repository" not in capfd.readouterr().err
    acc = res["metrics"]["lm_eval/deltalearn_tiny_facts/acc"]
    assert acc["n"] == 8 and 0 <= acc["mean"] <= 1 and acc["se"] is not None
    s = res["settings"]
    assert s["lm_eval_version"] and s["task_versions"]["deltalearn_tiny_facts"] == 1.0 and s["limit"] == 8


@pytest.mark.slow
def test_judge_through_an_openai_compatible_endpoint(tmp_path):
    """The judge on a real local server (deltalearn.serve, 127.0.0.1), both orders per prompt."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "deltalearn.serve", "--model", "smollm2-135m", "--port", "0",
                             "--batch-size", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving"), line + proc.stderr.read()
        url = line.split(" on ")[1].strip()
        cand = [{"id": "p1", "prompt": PROMPTS[0]["prompt"], "response": "**Routine**\nGo to bed at the same time."},
                {"id": "p2", "prompt": PROMPTS[1]["prompt"], "response": "42"}]
        base = [{"id": "p1", "prompt": PROMPTS[0]["prompt"], "response": "Sleep."},
                {"id": "p2", "prompt": PROMPTS[1]["prompt"], "response": "41"}]
        scores, ids = judge_scores(cand, base, "smollm2-135m", backend="openai", base_url=url,
                                   out_path=tmp_path / "judge.jsonl", progress=False)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert ids == ["p1", "p2"] and len(scores["judge/win_rate"]) == 2
    assert all(w in (0.0, 0.25, 0.5, 0.75, 1.0) for w in scores["judge/win_rate"])
    assert len((tmp_path / "judge.jsonl").read_text().splitlines()) == 4  # two orders x two prompts


def test_eval_cli_uses_the_held_out_split_by_default(tiny_model_dir, tmp_path):
    """`eval --prompts builtin:sections_prompts --limit 4` takes held-out (split: eval) prompts, never the
    train-split prompts pairs are built from (issue 17 item 2); --split train asks for those explicitly."""
    from deltalearn.cli import main

    rows = {json.loads(x)["id"]: json.loads(x)["split"] for x in
            (Path(__file__).parents[1] / "src/deltalearn/data/sections_prompts.jsonl").read_text().splitlines()}
    for split, label in ((None, "held"), ("train", "train")):
        argv = ["eval", "--model", tiny_model_dir, "--label", label, "--prompts", "builtin:sections_prompts",
                "--id-column", "id", "--limit", "4", "--max-new-tokens", "2", "--utilities", "bold_sections",
                "--out", str(tmp_path), "--no-progress"] + (["--split", split] if split else [])
        assert main(argv) == 0
        saved = json.loads((tmp_path / "eval" / f"{label}.json").read_text())
        ids = saved["items"]["ids"]["utility/bold_sections"]
        assert len(ids) == 4 and {rows[i] for i in ids} == {split or "eval"}


def test_numbers_print_at_the_precision_their_error_allows():
    from deltalearn.stats import fmt_mean_se

    assert fmt_mean_se(37.123456, 0.44071) == "37.12 ± 0.44"
    assert fmt_mean_se(0.5, 0.19) == "0.50 ± 0.19"
    assert fmt_mean_se(48.0, 0.0) == "48 ± 0"
    assert fmt_mean_se(-0.9712, 0.3913, signed=True) == "-0.97 ± 0.39"
    assert fmt_mean_se(1.96, 1.234, signed=True) == "+2.0 ± 1.2"


@pytest.mark.parametrize("extra", [[], ["--judge", "no-such-judge", "--base", "no-such-base"]])
def test_a_misspelled_utility_fails_before_any_model_loads(extra, tmp_path, capsys):
    """It was found only after the model had generated every answer (minutes); the model names here cannot load,
    so reaching the utility error at all shows nothing was loaded first (with --judge: not even the base)."""
    from deltalearn.cli import main

    rc = main(["eval", "--model", "no-such-model", "--prompts", "builtin:sections_prompts", "--limit", "1",
               "--utilities", "bold_sectionz", "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err == "deltalearn eval: error: unknown utility 'bold_sectionz'; did you mean 'bold_sections'?\n"
