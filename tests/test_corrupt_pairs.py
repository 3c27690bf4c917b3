"""The `corrupt` pairing rule and its corruptions (issue 32): seeded per prompt id, provenance on every pair,
each corruption does what its name says, refusals name the problem, the audit reads the corruption's delta, and
a miniature `deltalearn lab --corrupt` runs end to end. (tests/test_corruption.py is about corrupted data files.)"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from deltalearn.corrupt_pairs import pair_seed
from deltalearn.corruptions import (drop_sentence, sentences, shuffle_sentences, student_wrong_items, truncate,
                                    wrong_items)
from deltalearn.pairs import make_pairs
from deltalearn.recipe import ConfigError, PairConfig

TEXT = ("Paris is the capital of France. It lies on the Seine! Is it large? Yes, very.\n\n**Food**\n"
        "Cheese and bread are staples. Wine is common.")
REF = "58,07,33,11,22,44,55,66"
PROMPT = "37,05,81,62,14,90,26,43,"


def _gens(n: int = 12, text: str = TEXT) -> dict:
    return {"m": [{"id": f"p{i}", "prompt": f"question {i}", "response": text, "truncated": False}
                  for i in range(n)]}


def _items_gens(responses: list[str]) -> dict:
    return {"s": [{"id": f"q{i}", "prompt": PROMPT, "response": r, "reference": REF, "truncated": False}
                  for i, r in enumerate(responses)]}


def _pairs(gens, **kw):
    return make_pairs(gens, PairConfig(rule="corrupt", **kw))


def test_same_seed_and_id_give_the_same_pair_and_other_ids_differ():
    a, _ = _pairs(_gens(), corruption="shuffle_sentences", strength=3, seed=7)
    b, _ = _pairs({"m": list(reversed(_gens()["m"]))[:5]}, corruption="shuffle_sentences", strength=3, seed=7)
    by_id = {p["id"]: p["rejected"][0]["content"] for p in a}
    assert all(by_id[p["id"]] == p["rejected"][0]["content"] for p in b)  # order and subset do not matter
    assert len(set(by_id.values())) > 3  # the same text under other ids is corrupted otherwise
    c, _ = _pairs(_gens(), corruption="shuffle_sentences", strength=3, seed=8)
    assert [p["rejected"] for p in c] != [p["rejected"] for p in a]  # the seed matters too


def test_every_pair_records_its_provenance():
    pairs, summary = _pairs(_gens(4), corruption="drop_sentence", strength=2, seed=3)
    assert summary["pairs"] == 4 and summary["corruption"] == "drop_sentence" and summary["strength"] == 2
    for p in pairs:
        assert p["rule"] == "corrupt" and p["corruption"] == "drop_sentence" and p["corruption_strength"] == 2
        assert p["corruption_seed"] == pair_seed(3, p["id"]) and p["corruption_source"] == "m"
        assert p["corruption_info"] == {"sentences_dropped": 2, "sentences": 7}
        assert p["chosen_model"] == "m" and p["rejected_model"] == "m~drop_sentence@2"
        assert p["chosen"][0]["content"] == TEXT


def test_drop_sentence_removes_exactly_one_sentence():
    whole = sentences(TEXT)
    for seed in range(20):
        out, info = drop_sentence(TEXT, 1, random.Random(seed), {})
        left = sentences(out)
        assert len(left) == len(whole) - 1 and info["sentences_dropped"] == 1
        assert any(whole[:i] + whole[i + 1:] == left for i in range(len(whole)))  # the rest, in order


def test_shuffle_moves_k_sentences_and_keeps_them_all():
    whole = sentences(TEXT)
    out, info = shuffle_sentences(TEXT, 3, random.Random(1), {})
    moved = [i for i, (a, b) in enumerate(zip(whole, sentences(out))) if a != b]
    assert sorted(sentences(out)) == sorted(whole) and len(moved) == 3 and info["sentences_moved"] == 3


def test_truncate_cuts_the_last_words():
    out, info = truncate(TEXT, 0.5, random.Random(0), {})
    n = len(TEXT.split())
    assert TEXT.startswith(out) and len(out.split()) == n - round(n / 2) and info["words_cut"] == round(n / 2)


@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_m_items_change_exactly_m_items_to_wrong_values_right_ones_first(m):
    resp = "58,07,33,12,22,44,55,99"  # 6 of 8 right
    out, info = wrong_items(resp, m, random.Random(m), {"reference": REF, "prompt": PROMPT})
    got, was, want = out.split(","), resp.split(","), REF.split(",")
    changed = [i for i in range(8) if got[i] != was[i]]
    assert len(changed) == m and info["items_changed"] == m
    assert all(got[i] != want[i] and len(got[i]) == 2 and got[i].isdigit() for i in changed)
    assert info["right_items_lost"] == min(m, 6)


def test_m_items_nest_across_strengths_under_one_seed():
    rows = [_pairs(_items_gens(["58,07,33,11,22,44,55,66"]), corruption="wrong_items", strength=m)[0][0]
            for m in (1, 2, 4)]
    diff = [{i for i, (a, b) in enumerate(zip(REF.split(","), r["rejected"][0]["content"].split(","))) if a != b}
            for r in rows]
    assert diff[0] < diff[1] < diff[2]


def test_student_wrong_items_use_the_students_own_wrong_value(tmp_path):
    table = tmp_path / "wrong.json"
    table.write_text(json.dumps({k: "00" for k in PROMPT.rstrip(",").split(",")}))
    out, info = student_wrong_items(REF, 8, random.Random(0), {"reference": REF, "prompt": PROMPT,
                                                               "wrong_values": str(table)})
    assert out == ",".join(["00"] * 8) and info["fallback"] == 0
    # a key without a wrong value (or whose wrong value is the right one) gets a random wrong value instead
    out, info = student_wrong_items(REF, 8, random.Random(0), {"reference": REF, "prompt": PROMPT,
                                                               "wrong_values": {"37": "58"}})
    assert info["fallback"] == 8 and all(a != b for a, b in zip(out.split(","), REF.split(",")))


def test_strength_zero_is_the_identity_and_unbreakable_responses_are_counted():
    pairs, summary = _pairs(_gens(3), corruption="wrong_items", strength=0)
    assert len(pairs) == 3 and all(p["chosen"] == p["rejected"] for p in pairs) and "identity" in summary["note"]
    gens = {"m": [{"id": "a", "prompt": "q", "response": TEXT}, {"id": "b", "prompt": "q", "response": "One."}]}
    pairs, summary = _pairs(gens, corruption="drop_sentence", strength=1)
    assert [p["id"] for p in pairs] == ["a"] and summary["dropped"]["unchanged"] == 1
    assert "could not change" in summary["unchanged_note"]


def test_reverse_control_and_another_named_column():
    gens = {"own": _gens(2)["m"], "weak": [dict(r, response="A. B. C.") for r in _gens(2)["m"]]}
    pairs, _ = _pairs(gens, chosen="own", rejected="weak", corruption="drop_sentence", strength=1, control="reverse")
    assert all(p["chosen_model"] == "weak~drop_sentence@1" and p["rejected"][0]["content"] == TEXT for p in pairs)


@pytest.mark.parametrize("kw, message", [
    (dict(corruption="drop_sentences"), "did you mean 'drop_sentence'"),
    (dict(corruption=None), "needs pair.corruption"),
    (dict(corruption="drop_sentence", strength=-1), "negative"),
    (dict(corruption="wrong_items", strength=1.5), "whole number"),
    (dict(corruption="truncate", strength=1.0), "0 <= s < 1"),
    (dict(corruption="shuffle_sentences", strength=1), "k >= 2"),
    (dict(corruption="drop_sentence", strength=float("nan")), "finite"),
    (dict(corruption="drop_sentence", control="tie"), "strength 0"),
    (dict(corruption="no_such_module_xyz:fn"), "cannot import module"),
    (dict(corruption="student_wrong_items"), "wrong_values"),
])
def test_refusals_name_the_problem(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _pairs(_items_gens([REF]), **kw)


def test_a_users_own_corruption(tmp_path, monkeypatch):
    (tmp_path / "my_corruptions.py").write_text("def shout(text, strength, rng, context):\n"
                                                "    return text.upper()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pairs, _ = _pairs(_gens(2), corruption="my_corruptions:shout", strength=1)
    assert pairs[0]["rejected"][0]["content"] == TEXT.upper() and pairs[0]["corruption_info"] == {}


def test_cli_pair_corrupt_and_the_audit_reads_the_corruption(tmp_path):
    from deltalearn.audit import audit_pairs, audit_tables

    gen = tmp_path / "gens.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in _gens(6)["m"]))
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "deltalearn.cli", "pair", "--generations", str(gen), "--rule", "corrupt"]
    out = tmp_path / "pairs"
    r = subprocess.run(cmd + ["--corruption", "truncate", "--strength", "0.25", "--out", str(out), "--export",
                              "jsonl"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(x["corruption"] == "truncate" and x["corruption_strength"] == 0.25 for x in rows)
    bad = subprocess.run(cmd + ["--corruption", "truncat"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "did you mean 'truncate'" in bad.stderr and "Traceback" not in bad.stderr
    a = audit_pairs(out)
    g = a["corruption"]["groups"][0]
    assert (g["corruption"], g["strength"], g["pairs"], g["identical"]) == ("truncate", 0.25, 6, 0)
    assert g["info_mean"]["words_cut"] == round(0.25 * len(TEXT.split()))
    assert any(t["title"].startswith("Audit 2b. The corruption's delta") for t in audit_tables(a))


@pytest.mark.slow
def test_mini_corrupt_lab_end_to_end(tmp_path, monkeypatch):
    """A miniature `deltalearn lab --corrupt` on the items task: the rung fixed, one lr, two values of m."""
    from deltalearn.lab.corrupt import run_corrupt_lab
    from deltalearn.lab.ladder import LadderConfig, build_ladder
    from deltalearn.recipe import load_recipe

    ladder = {"name": "mini-c", "student_run": "a", "dev_size": 8, "workers": 1, "targets": [0.0, 0.01, 0.02],
              "runs": [{"name": "a", "hidden": 32, "layers": 1, "steps": 16, "eval_every": 4, "lr": 1e-2,
                        "warmup": 4, "batch": 16}]}
    home = tmp_path / "home"
    cfg = LadderConfig.from_dict(ladder)
    cfg.task = "items"
    build_ladder(cfg, home, progress=False)
    monkeypatch.setenv("DELTALEARN_LAB_DIR", str(home))
    data = {"name": "mini-corrupt", "kind": "lab",
            "train": {"lr": 3e-6, "min_lr_ratio": 1.0, "warmup_ratio": 0.0, "batch_size": 4, "micro_batch_size": 4,
                      "max_steps": 1, "max_len": 128, "precision": "fp32"},
            "experiment": {"task": "items", "pref_prompts": 8, "eval_prompts": 8, "dev_prompts": 8,
                           "max_new_tokens": 40, "workers": 1, "drop_truncated": False, "ladder": ladder,
                           "pairs_on_dev": True,
                           "corrupt": {"m": [1], "lr_grid": [3e-6], "chosen_rung": "r2", "natural": 1,
                                       "student_samples": 1}}}
    res = run_corrupt_lab(load_recipe(data=data), tmp_path / "run", progress=False)
    arms = res["arms"]
    assert set(arms) | set(res["arms_without_pairs"]) == {"m1", "student-m1", "zero", "natural-r1", "sft", "self-m1",
                                                          "self-student-m1", "self-sft", "self-reversed-m1"}
    assert arms["zero"]["pairs"]["delta"] == 0  # strength 0: identical sides
    m1 = [json.loads(x) for x in (tmp_path / "run" / "pairs" / "m1.jsonl").read_text().splitlines()]
    assert all(r["corruption_info"]["items_changed"] == 1 and r["rule"] == "corrupt" for r in m1)
    assert (tmp_path / "run" / "wrong_values.json").exists()
    assert res["choices"]["chosen_rung"] == "r2" and res["choices"]["lr_main"] == 3e-6
    assert res["plots"][0]["path"] == "plots/corrupt.png" and (tmp_path / "run" / "plots" / "corrupt.png").exists()


def test_lab_corrupt_plot_is_drawn_from_results_json(tmp_path):
    """`lab --corrupt --render` redraws plots/corrupt.png from a finished run's results.json (here the saved
    lookups run), and `python -m deltalearn.lab.report` draws the two-task figure from the saved files."""
    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text((root / "docs/data/lab-lookups-corrupt-results.json").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "deltalearn.cli", "lab", "--recipe",
                        str(root / "recipes/lab-lookups.yaml"), "--corrupt", "--render", "--out", str(run)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    png = run / "plots" / "corrupt.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    res = json.loads((run / "results.json").read_text())
    assert res["plots"] == [{"title": "Gain vs the number of corrupted items, with the controls",
                             "path": "plots/corrupt.png"}]
    assert res["arms"]["m1"]["gain"] > 0 and "Main: weak chosen rung r2" in r.stdout  # the run's numbers kept
    both = tmp_path / "both.png"
    r = subprocess.run([sys.executable, "-m", "deltalearn.lab.report",
                        f"lookups={root / 'docs/data/lab-lookups-corrupt-results.json'}",
                        f"digit sums={root / 'docs/data/lab-items-corrupt-results.json'}", str(both)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert both.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and both.stat().st_size > png.stat().st_size
