"""The authors' released datasets, in exactly their layout: one column per model (or per k for the sections data)
whose value is a whole conversation, [{"role": "user", ...}, {"role": "assistant", ...}]; OpenRLHF takes every
message but the last as the prompt and the last as the response (reward_dataset.py). They load as they are in
`deltalearn pair --generations`, `deltalearn train --chosen-key/--rejected-key`, and the sections experiment."""

import json
import os
import subprocess
import sys

import pytest

from conftest import toy_pair_rows
from deltalearn.io import DataError, write_jsonl_atomic as write_jsonl
from deltalearn.pairs import load_generations, make_pairs
from deltalearn.recipe import PairConfig, load_recipe

CHOSEN, REJECTED, THIRD = "qwen-2.5-3b-instruct", "qwen-2.5-1.5b-instruct", "qwen-2.5-0.5b-instruct"


def _conv(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def ladder_rows(with_prompt: bool = False) -> list[dict]:
    """scottgeng00/delta_learning_model_ladder's layout: per model column, the whole conversation."""
    rows = []
    for r in toy_pair_rows():
        p = r["prompt"][0]["content"]
        row = {CHOSEN: _conv(p, r["chosen"][0]["content"]), REJECTED: _conv(p, r["rejected"][0]["content"]),
               THIRD: _conv(p, "I do not know.")}
        rows.append({"prompt": p, **row} if with_prompt else row)
    return rows


@pytest.mark.parametrize("with_prompt", [False, True])
def test_pair_generations_reads_conversation_columns(tmp_path, with_prompt):
    path = tmp_path / "ladder.jsonl"
    write_jsonl(path, ladder_rows(with_prompt))
    gens = load_generations(path)
    assert sorted(gens) == sorted([CHOSEN, REJECTED, THIRD])
    first = gens[CHOSEN][0]
    assert first["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert first["response"] == "The capital of France is **Paris**."
    pairs, summary = make_pairs(gens, PairConfig(rule="columns", chosen=CHOSEN, rejected=REJECTED))
    assert len(pairs) == 8 and pairs[0]["rejected"] == [{"role": "assistant", "content": "It is Rome, I think."}]
    # the CLI, as a user runs it
    out = subprocess.run([sys.executable, "-m", "deltalearn.cli", "pair", "--generations", str(path), "--rule",
                          "columns", "--chosen", CHOSEN, "--rejected", REJECTED, "--out", str(tmp_path / "pairs")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "saved 8 pairs" in out.stderr


@pytest.mark.parametrize("bad, message", [
    ([{"role": "user", "content": "Hi"}], "the last message must be the assistant's answer"),
    ([{"role": "assistant", "content": "Hi"}], "no prompt before the assistant's answer"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 3}], "message 1: 'content' must be"),
    ([], "got an empty list"),
])
def test_a_malformed_conversation_names_file_row_and_column(tmp_path, bad, message):
    rows = ladder_rows()
    rows[1][REJECTED] = bad
    path = tmp_path / "ladder.jsonl"
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=rf"ladder.jsonl, row 2, field '{REJECTED}': .*{message}"):
        load_generations(path)
    from deltalearn.conversations import pairs_from_columns

    with pytest.raises(DataError, match=rf"ladder.jsonl, row 2, field '{REJECTED}': .*{message}"):
        pairs_from_columns(rows, CHOSEN, REJECTED, source=str(path))


def test_two_columns_with_different_prompts_are_no_pair(tmp_path):
    from deltalearn.conversations import pairs_from_columns

    rows = ladder_rows()
    rows[0][REJECTED] = _conv("Another question?", "An answer.")
    with pytest.raises(DataError, match=rf"row 1, field '{REJECTED}': the prompt of .* differs"):
        pairs_from_columns(rows, CHOSEN, REJECTED, source="x.jsonl")


def test_released_layout_trains_with_named_columns(tmp_path, tiny_model_dir):
    """`deltalearn train --pairs FILE --chosen-key ... --rejected-key ...` on the released layout, tiny model, fp32,
    two steps; the first step's loss is ln 2 (policy = reference), so the columns were read as pairs."""
    path = tmp_path / "ladder.jsonl"
    write_jsonl(path, ladder_rows())
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "deltalearn.cli", "train", "--pairs", str(path), "--out", str(out),
                          "--model", tiny_model_dir, "--chosen-key", CHOSEN, "--rejected-key", REJECTED,
                          "--precision", "fp32", "--no-progress", "--set", "train.batch_size=4",
                          "--set", "train.micro_batch_size=2", "--set", "train.max_steps=2",
                          "--set", "train.truncation=eos_at_cut",
                          "--set", "train.ref_cache_dir=" + str(tmp_path / "rc")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2 and abs(steps[0]["loss"] - 0.6931) < 1e-3
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["pairs"] == 8


def test_sections_experiment_reads_the_released_conversation_columns(tmp_path):
    """scottgeng00/delta_learning_num_sections: a conversation per K_sections column; the prompt is read from one
    of them (prompts.column: 3_sections) and each column's answer is y_k."""
    from deltalearn.experiments.sections import load_split_prompts, settings_from

    rows = []
    for i in range(12):
        p = f"Explain topic number {i} in a few sections."
        rows.append({k: _conv(p, "\n".join(f"**Part {j}**\nText {j} of topic {i}." for j in range(n)))
                     for k, n in (("2_sections", 2), ("3_sections", 3), ("9_sections", 9))})
    path = tmp_path / "num_sections.jsonl"
    write_jsonl(path, rows)
    recipe = load_recipe(data={"name": "s", "kind": "sections", "prompts": {"path": str(path), "column": "3_sections"},
                               "train": {"model": "smollm2-135m"}, "arms": [{"name": "dpo-3-over-2"}],
                               "pair": {"rule": "columns", "chosen": "3_sections", "rejected": "2_sections"}})
    train, _, held = load_split_prompts(recipe, settings_from(recipe))
    assert train and held
    r = train[0]
    assert r["prompt"][0]["role"] == "user" and len(r["prompt"]) == 1
    assert r["3_sections"].startswith("**Part 0**") and r["9_sections"].count("**Part") == 9
    rows[3]["2_sections"] = [{"role": "user", "content": "only a prompt"}]
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"field '2_sections \(prompt id .*\)': the last message must be"):
        load_split_prompts(recipe, settings_from(recipe))
