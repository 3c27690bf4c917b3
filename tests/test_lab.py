"""The tiny lab: task generator and grader, split disjointness, the tokenizer through the project's tokenization,
a lab model through the ordinary model loader and generator, and a miniature end-to-end lab run."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from deltalearn.lab import task
from deltalearn.lab.tokenizer import build_tokenizer
from deltalearn.recipe import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_worked_solution_and_answer_are_right():
    p = task.Problem((6, 9, 5, 1, 6))
    assert p.prompt == "6+9+5+1+6="
    assert p.solution == "6+9=15,15+5=20,20+1=21,21+6=27,Answer:27"
    assert p.answer == "27"
    assert task.parse_prompt(p.prompt) == p
    rng = random.Random(1)
    for _ in range(200):
        q = task.random_problem(rng, "train")
        assert task.MIN_TERMS <= len(q.terms) <= task.MAX_TERMS
        steps = q.solution.split(",")
        assert steps[-1] == f"Answer:{sum(q.terms)}"
        # each step adds the next term to the previous running sum, and the arithmetic is right
        total = q.terms[0]
        for step, t in zip(steps[:-1], q.terms[1:]):
            lhs, rhs = step.split("=")
            a, b = map(int, lhs.split("+"))
            assert (a, b) == (total, t) and int(rhs) == a + b
            total += t


def test_grader_is_exact_match_of_the_final_answer():
    assert task.grade("6+9=15,Answer:27", "27") == 1.0
    assert task.grade("6+9=15,Answer:28", "27") == 0.0
    assert task.grade("6+9=15,Answer:27,Answer:26", "27") == 0.0  # the *final* answer counts
    assert task.grade("", "27") == 0.0
    assert task.grade("Answer:2", "27") == 0.0
    with pytest.raises(ValueError):
        task.parse_prompt("12+3=")


def test_splits_never_overlap_and_samples_are_deterministic():
    sets = {s: {p.terms for p in task.sample_problems(s, 600, seed=0)} for s in task.SPLITS}
    for s, terms in sets.items():
        assert len(terms) == 600  # unique within a split
        assert all(task.split_of(t) == s for t in terms)
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b)
    assert task.sample_problems("eval", 50, seed=3) == task.sample_problems("eval", 50, seed=3)
    assert task.sample_problems("eval", 50, seed=3) != task.sample_problems("eval", 50, seed=4)
    rows = task.prompt_rows(task.sample_problems("dev", 5, seed=0))
    assert all(r["reference"] == str(sum(task.parse_prompt(r["prompt"]).terms)) for r in rows)


def test_tokenizer_round_trip_and_prefix_stable_template(tmp_path):
    from transformers import AutoTokenizer

    from deltalearn.lab.ladder import fast_ids
    from deltalearn.tokenize import encode_pair, prompt_ids, response_ids

    tok = build_tokenizer()
    assert len(tok) == 18
    p = task.Problem((6, 9, 5, 1, 6))
    ids = tok(p.prompt + p.solution, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == p.prompt + p.solution
    assert tok.convert_ids_to_tokens(ids).count("Answer:") == 1  # one token, not seven characters
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2(p.solution, add_special_tokens=False)["input_ids"] == tok(p.solution, add_special_tokens=False)["input_ids"]
    for t in (tok, tok2):
        pi = prompt_ids(t, p.prompt)
        assert t.decode(pi) == "<bos>6+9+5+1+6="
        ri = response_ids(t, p.prompt, p.solution)
        assert t.decode(ri) == p.solution + "<eos>" and ri[-1] == t.eos_token_id
        assert (pi, ri) == fast_ids(t, p)  # pretraining's fast path tokenizes exactly as tokenize.py does
        enc = encode_pair(t, [{"role": "user", "content": p.prompt}], p.solution, "6+9=15,Answer:15", max_len=128)
        assert enc.prompt == pi and enc.chosen == ri
        assert t.decode(enc.rejected) == "6+9=15,Answer:15<eos>"


def _tiny_model(tok, path, hidden=16, layers=1):
    from deltalearn.lab.ladder import RunSpec, build_model

    model = build_model(RunSpec("t", hidden, layers, steps=1, eval_every=1), tok)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


def test_lab_model_loads_and_generates_like_any_model(tmp_path, monkeypatch):
    from deltalearn.generate import generate_responses
    from deltalearn.models import load_model

    monkeypatch.setenv("DELTALEARN_LAB_DIR", str(tmp_path))
    tok = build_tokenizer()
    _tiny_model(tok, tmp_path / "tiny")
    model, tok2 = load_model("lab:tiny")
    assert model.config.tie_word_embeddings and tok2.chat_template == tok.chat_template
    prompts = task.prompt_rows(task.sample_problems("eval", 6, seed=0))
    rows = generate_responses("lab:tiny", prompts, tmp_path / "gen.jsonl", max_new_tokens=8, progress=False)
    assert [r["id"] for r in rows] == [p["id"] for p in prompts]
    assert all(r["reference"] == p["reference"] and r["n_tokens"] <= 8 for r, p in zip(rows, prompts))
    # the same model object answers the same way when passed loaded (greedy is deterministic)
    again = generate_responses(model, prompts, max_new_tokens=8, tokenizer=tok2, progress=False)
    assert [r["response"] for r in again] == [r["response"] for r in rows]


MINI_LADDER = {"name": "mini", "student_run": "a", "dev_size": 8, "workers": 1, "targets": [0.0, 0.01, 0.02],
               "runs": [{"name": "a", "hidden": 32, "layers": 1, "steps": 32, "eval_every": 8, "lr": 1e-2,
                         "warmup": 4, "batch": 32}]}


@pytest.fixture(scope="module")
def mini_lab(tmp_path_factory):
    """A tiny ladder (one d32 run, 32 steps: enough to emit digit strings) shared by the tests below."""
    from deltalearn.lab.ladder import LadderConfig, build_ladder

    home = tmp_path_factory.mktemp("labhome")
    rec = build_ladder(LadderConfig.from_dict(MINI_LADDER), home, progress=False)
    return home, rec


def test_ladder_pretraining_learns_and_caches(mini_lab):
    from deltalearn.lab.ladder import LadderConfig, build_ladder

    home, rec = mini_lab
    curve = rec["curves"][0]["curve"]
    assert [p["step"] for p in curve] == [8, 16, 24, 32]
    assert curve[-1]["loss"] < 2.5  # next-token loss fell well below uniform over 18 tokens (ln 18 = 2.89)
    assert [r["name"] for r in rec["rungs"]] == ["r1", "r2", "r3"] and rec["student"]["step"] == 32
    assert all(a["dev_acc"] <= b["dev_acc"] for a, b in zip(rec["rungs"], rec["rungs"][1:]))
    assert (home / "mini" / "student" / "tokenizer_config.json").exists()
    again = build_ladder(LadderConfig.from_dict(MINI_LADDER), home, progress=False)
    assert again["cached"] and again["rungs"] == rec["rungs"]


def test_student_step_installs_an_earlier_checkpoint_without_retraining(mini_lab, tmp_path):
    """ladder.student_step makes an earlier checkpoint of the student's run `lab:student`; nothing is retrained
    and that checkpoint cannot also be a rung."""
    import shutil

    from deltalearn.lab.ladder import LadderConfig, build_ladder

    home = tmp_path / "home"
    shutil.copytree(mini_lab[0], home)
    curve_file = next((home / "mini" / "runs").glob("a-*/curve.json"))
    stamp = curve_file.stat().st_mtime_ns
    rec = build_ladder(LadderConfig.from_dict(dict(MINI_LADDER, student_step=16)), home, progress=False)
    assert rec["student"]["step"] == 16 and not rec["cached"]
    assert rec["student"]["path"] not in [r["path"] for r in rec["rungs"]]
    assert json.loads((home / "mini" / "student" / "SOURCE.json").read_text())["checkpoint"].endswith("step-16")
    assert curve_file.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="student_step: 12 is not a checkpoint of run a"):
        LadderConfig.from_dict(dict(MINI_LADDER, student_step=12))


def test_mini_lab_end_to_end(mini_lab, tmp_path, monkeypatch):
    """A miniature `deltalearn lab`: the tiny ladder, a few pairs and steps; checks the run folder's contract."""
    from deltalearn.lab.experiments import run_lab
    from deltalearn.recipe import load_recipe

    monkeypatch.setenv("DELTALEARN_LAB_DIR", str(mini_lab[0]))
    recipe = load_recipe(data={
        "name": "mini", "kind": "lab",
        "train": {"lr": 3e-6, "min_lr_ratio": 1.0, "warmup_ratio": 0.0, "batch_size": 4, "micro_batch_size": 4,
                  "max_steps": 2, "max_len": 128, "precision": "fp32"},
        "experiment": {"pref_prompts": 16, "eval_prompts": 16, "max_new_tokens": 24, "workers": 1,
                       "drop_truncated": False, "main_chosen": "r3", "main_rejected": "r2", "self_weaker": "r1",
                       "lr_grid": [1e-6, 3e-6], "dev_prompts": 8, "ladder": MINI_LADDER},
    })
    res = run_lab(recipe, tmp_path / "run", progress=False)
    out = json.loads((tmp_path / "run" / "results.json").read_text())
    assert out == json.loads(json.dumps(res))
    titles = [t["title"] for t in out["tables"]]
    sel = json.loads((tmp_path / "run" / "dev" / "selection.json").read_text())
    assert [r["lr"] for r in sel["grid"]] == [1e-6, 3e-6] and sel["lr"] in (1e-6, 3e-6)
    assert json.loads((tmp_path / "run" / "arms" / "main-dpo" / "train_config.json").read_text())["lr"] == sel["lr"]
    assert any(t.startswith("Learning rate chosen on the dev split") for t in titles)
    assert titles[0].startswith("Ladder") and any(t.startswith("Main recipe") for t in titles)
    main = next(t for t in out["tables"] if t["title"].startswith("Main recipe"))
    arms = [r[0] for r in main["rows"]]
    assert arms == ["student (base)", "main-dpo_norm", "main-dpo", "main-sft-chosen", "main-reversed",
                    "main-zero-delta", "plateau-sft-gold"]
    for p in out["plots"]:
        assert (tmp_path / "run" / p["path"]).stat().st_size > 1000
    for arm in arms[1:]:
        ev = json.loads((tmp_path / "run" / "eval" / f"{arm}.json").read_text())
        assert ev["metrics"]["utility/exact_answer"]["n"] == 16
        assert len(ev["items"]["scores"]["utility/exact_answer"]) == 16
        assert (tmp_path / "run" / "arms" / arm / "COMPLETED").exists()
    # reversed really swaps the two sides of the main pairs
    fwd = [json.loads(x) for x in (tmp_path / "run" / "pairs" / "main-dpo_norm.jsonl").read_text().splitlines()]
    rev = [json.loads(x) for x in (tmp_path / "run" / "pairs" / "main-reversed.jsonl").read_text().splitlines()]
    assert [r["chosen"] for r in rev] == [r["rejected"] for r in fwd]
    assert all(r["chosen"] != r["rejected"] for r in fwd)  # identical pairs are dropped by pairs.make_pairs
    assert (tmp_path / "run" / "eval" / "base.json").exists()


def test_choose_dev_pairs_takes_the_best_pair_whose_chosen_side_is_weak_data():
    """The main pair must have a chosen rung whose SFT alone does not raise the student (the claims' "weak"), even
    when a pair with a stronger chosen rung gains more; self-over-weaker is the best own > rung."""
    from deltalearn.lab.experiments import choose_dev_pairs

    def row(arm, loss, chosen, rejected, gain):
        return {"arm": arm, "loss": loss, "chosen": chosen, "rejected": rejected, "dev_gain": gain}

    rows = [row("sft-r1", "sft", "r1", None, -0.02), row("sft-r2", "sft", "r2", None, -0.01),
            row("sft-r3", "sft", "r3", None, 0.02),
            row("pair-r2-over-r1", "dpo_norm", "r2", "r1", 0.01), row("pair-r3-over-r1", "dpo_norm", "r3", "r1", 0.03),
            row("pair-r3-over-r2", "dpo_norm", "r3", "r2", 0.02),
            row("self-over-r1", "dpo_norm", "student", "r1", -0.01), row("self-over-r2", "dpo_norm", "student", "r2", 0.0)]
    got = choose_dev_pairs(rows)
    assert got["main"]["arm"] == "pair-r2-over-r1" and got["weak_chosen"] == ["r2"]  # r3 gains more but is not weak
    assert got["self"]["arm"] == "self-over-r2"
    rows[1]["dev_gain"] = 0.01
    with pytest.raises(ConfigError, match=r"SFT on every rung below the student raises it on dev \(r1 -2.00, r2 \+1.00"):
        choose_dev_pairs(rows)


@pytest.mark.parametrize("override, message", [
    ("experiment.pairs_on_dev=maybe", "experiment.pairs_on_dev: expected true or false, got 'maybe'"),
    ("experiment.dev_prompts=abc", "experiment.dev_prompts: expected a whole number"),
    ("experiment.pair_on_dev=true", "did you mean 'pairs_on_dev'"),
])
def test_lab_settings_name_the_bad_key(override, message):
    from deltalearn.lab.experiments import LabSettings
    from deltalearn.recipe import load_recipe

    with pytest.raises(ConfigError, match=re.escape(message)):
        LabSettings.from_recipe(load_recipe(ROOT / "recipes" / "lab-lookups.yaml", [override]))


def test_pairs_on_dev_chooses_the_main_and_self_pairs_on_dev_prompts_only(mini_lab, tmp_path, monkeypatch):
    """experiment.pairs_on_dev end to end: every candidate (SFT on each rung below the student, every rung pair,
    own > each rung) is trained and scored on the dev prompts; the chosen pair and rung become the main and
    self-over-weaker arms, and self-over-weaker gets its own lr chosen on dev. The mini ladder's student is no
    better than its rungs, so its record is given a student above them (a copy of the ladder folder; the models
    are the real ones)."""
    import shutil

    from deltalearn.lab.experiments import choose_dev_pairs, dev_pair_candidates, run_lab
    from deltalearn.recipe import load_recipe

    assert [a.name for a in dev_pair_candidates(["r1", "r2", "r3"])] == [
        "sft-r1", "sft-r2", "sft-r3", "pair-r2-over-r1", "pair-r3-over-r1", "pair-r3-over-r2",
        "self-over-r1", "self-over-r2", "self-over-r3"]
    home = tmp_path / "home"
    shutil.copytree(mini_lab[0], home)
    monkeypatch.setenv("DELTALEARN_LAB_DIR", str(home))
    data = {"name": "mini-devpairs", "kind": "lab",
            "train": {"lr": 3e-6, "min_lr_ratio": 1.0, "warmup_ratio": 0.0, "batch_size": 4, "micro_batch_size": 4,
                      "max_steps": 1, "max_len": 128, "precision": "fp32"},
            "experiment": {"pref_prompts": 8, "eval_prompts": 8, "max_new_tokens": 24, "workers": 1,
                           "drop_truncated": False, "pairs_on_dev": True, "sweep_lr": 1e-4, "dev_prompts": 8,
                           "lr_grid": [1e-6, 1e-4], "ladder": MINI_LADDER}}
    with pytest.raises(ConfigError, match="pairs_on_dev: 0 rung.s. below the student's dev accuracy"):
        run_lab(load_recipe(data=data), tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused" / "eval").exists()  # nothing was evaluated before the refusal
    ladder_json = home / "mini" / "ladder.json"
    rec = json.loads(ladder_json.read_text())
    rec["student"]["dev_acc"] = 1.0
    ladder_json.write_text(json.dumps(rec))
    res = run_lab(load_recipe(data=data), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    sel = json.loads((run / "dev" / "pairs.json").read_text())
    assert [r["arm"] for r in sel["candidates"]] == [a.name for a in dev_pair_candidates(["r1", "r2", "r3"])]
    key = "utility/exact_answer"
    base = json.loads((run / "dev" / "eval" / "base.json").read_text())
    for r in sel["candidates"]:  # each gain is its own dev eval against the dev base, recomputed here
        arm = json.loads((run / "dev" / "eval" / f"{r['arm']}.json").read_text())
        assert len(arm["items"]["scores"][key]) == 8 and arm["items"]["ids"][key] == base["items"]["ids"][key]
        diffs = [a - b for a, b in zip(arm["items"]["scores"][key], base["items"]["scores"][key])]
        assert r["dev_gain"] == pytest.approx(sum(diffs) / len(diffs))
        assert json.loads((run / "dev" / "arms" / r["arm"] / "train_config.json").read_text())["lr"] == 1e-4
    picked = choose_dev_pairs(sel["candidates"])
    assert sel["main"] == picked["main"] and sel["self"] == picked["self"]
    main = next(t for t in res["tables"] if t["title"].startswith("Main recipe"))
    assert main["title"].startswith(f"Main recipe: chosen = {sel['main']['chosen']}, rejected = {sel['main']['rejected']}")
    pairs = [json.loads(x) for x in (run / "pairs" / "main-dpo_norm.jsonl").read_text().splitlines()]
    assert {r["chosen_model"] for r in pairs} == {sel["main"]["chosen"]}
    own = [json.loads(x) for x in (run / "pairs" / "self-dpo_norm.jsonl").read_text().splitlines()]
    assert {r["rejected_model"] for r in own} == {sel["self"]["rejected"]}
    self_lr = json.loads((run / "dev" / "selection-self.json").read_text())
    assert self_lr["arm"] == f"dpo_norm own > {sel['self']['rejected']}" and [g["lr"] for g in self_lr["grid"]] == [1e-6, 1e-4]
    for arm in ("self-dpo_norm", "self-sft", "self-reversed"):
        assert json.loads((run / "arms" / arm / "train_config.json").read_text())["lr"] == self_lr["lr"]
    from deltalearn.lab.experiments import Lab, main_arms, self_arms

    lab = Lab(load_recipe(data=data), run, progress=False)  # the mini grid ties, so both lrs are its smallest:
    lab.self_selection = {"lr": 5e-6}                        # check the per-arm rule directly too
    assert lab.arm_lrs(main_arms(lab.s) + self_arms(lab.s)) == [None] * 6 + [5e-6] * 3
    titles = [t["title"] for t in res["tables"]]
    assert any(t.startswith("Pairs chosen on the dev split") for t in titles)
    assert sum(t.startswith("Learning rate chosen on the dev split") for t in titles) == 2
    # the folder's cached choices and pairs are reused only under the settings they were made with
    assert run_lab(load_recipe(data=data), run, progress=False)["tables"] == res["tables"]
    other_lr = json.loads(json.dumps(data))
    other_lr["experiment"]["sweep_lr"] = 1e-3
    with pytest.raises(ConfigError, match=r"pairs.json was chosen under other settings \(lr: 0.0001 vs 0.001"):
        run_lab(load_recipe(data=other_lr), run, progress=False)
    rungs = ["r1", "r2", "r3"]
    c, r = sel["main"]["chosen"], sel["main"]["rejected"]
    other = next((a, b) for a in rungs for b in rungs if rungs.index(a) > rungs.index(b) and (a, b) != (c, r))
    fixed = json.loads(json.dumps(data))
    fixed["experiment"].update(pairs_on_dev=False, lr_grid=[], main_chosen=other[0], main_rejected=other[1],
                               self_weaker="r1")
    with pytest.raises(ConfigError, match=f"main-dpo_norm.jsonl holds pairs {c} > {r}, but arm main-dpo_norm is "
                                          f"{other[0]} > {other[1]}"):
        run_lab(load_recipe(data=fixed), run, progress=False)


# ---------------------------------------------------------------------------------------------------------
# The items task (many independent items per response, graded by the fraction right)
# ---------------------------------------------------------------------------------------------------------


def test_items_task_solution_grade_and_splits():
    from deltalearn.lab.items import DIGIT_SUMS as items

    assert task.get_task("items") is items and task.get_task("running_sum") is task
    with pytest.raises(ConfigError, match="unknown task 'sum'"):
        task.get_task("sum")
    p = items.problem(("728", "771", "252", "930", "519", "650", "169", "108"))
    assert p.prompt == "728,771,252,930,519,650,169,108="
    assert p.solution == "017,015,009,012,015,011,016,009" == p.answer
    assert items.parse_prompt(p.prompt) == p
    assert items.grade(p.solution, p.answer) == 1.0
    # a real d32 sample: three off-by-one items, each wrong on its own; the others stay right
    sample = "016,015,009,012,015,010,016,008"
    assert items.items_right(sample, p.answer) == [0, 1, 1, 1, 1, 0, 1, 0]
    assert items.grade(sample, p.answer) == 5 / 8
    with pytest.raises(ValueError):
        items.parse_prompt("72,771=")
    sets = {s: {q.keys for q in items.sample_problems(s, 400, seed=0)} for s in items.SPLITS}
    for s, keys in sets.items():
        assert len(keys) == 400 and all(items.split_of(k) == s for k in keys)
        assert all(len(set(k)) == items.ITEMS for k in keys)  # distinct keys within a prompt
    names = list(sets)
    assert not any(sets[a] & sets[b] for i, a in enumerate(names) for b in names[i + 1:])
    rows = items.prompt_rows(items.sample_problems("dev", 5, seed=0))
    assert all(r["reference"] == items.parse_prompt(r["prompt"]).solution for r in rows)


@pytest.mark.parametrize("name", ["items", "lookups"])
def test_items_tokenize_like_the_project_and_fit_the_model(name):
    from deltalearn.lab.ladder import fast_ids
    from deltalearn.tokenize import prompt_ids, response_ids

    items = task.get_task(name)
    tok = build_tokenizer()
    p = items.sample_problems("train", 1, seed=0)[0]
    pi, ri = fast_ids(tok, p)
    assert (pi, ri) == (prompt_ids(tok, p.prompt), response_ids(tok, p.prompt, p.solution))
    # every answer slot is the prompt's length after its key: the layout the task relies on
    assert len(pi) - 1 == len(ri) == (items.key_digits + 1) * items.ITEMS  # keys + separators; answers + EOS
    assert len(pi) + len(ri) <= 128  # the models' max_position_embeddings


def test_lookups_is_a_fixed_random_table():
    from deltalearn.lab.items import LOOKUPS, table_value

    assert task.get_task("lookups") is LOOKUPS
    values = [table_value(f"{i:02d}") for i in range(100)]
    assert values == [table_value(f"{i:02d}") for i in range(100)]  # a pure function of the key
    assert all(len(v) == 2 and v.isdigit() for v in values) and len(set(values)) > 50  # not a simple rule
    p = LOOKUPS.sample_problems("pref", 3, seed=0)[0]
    assert p.solution == ",".join(table_value(k) for k in p.keys) and p.id.startswith("lookups-")
    assert LOOKUPS.parse_prompt(p.prompt) == p
    assert not {q.keys for q in LOOKUPS.sample_problems("pref", 300, seed=0)} & {
        q.keys for q in LOOKUPS.sample_problems("eval", 300, seed=0)}


def test_kappa_analog_counts_only_the_items_the_student_gets_wrong():
    from deltalearn.lab.items import DIGIT_SUMS as items
    from deltalearn.lab.report import kappa_analog

    ref = "017,015,009,012"
    row = lambda c, r: {"id": "a", "reference": ref, "chosen": [{"content": c}], "rejected": [{"content": r}]}
    student = {"a": {"response": "016,015,008,012"}}  # wrong on items 0 and 2
    # item 0: chosen right, rejected wrong (cw); item 2: chosen wrong, rejected right (wc); item 1: student right
    k = kappa_analog([row("017,000,007,012", "018,015,009,012")], student, items)
    assert (k["cw"], k["wc"], k["student_wrong_items"], k["kappa"]) == (1, 1, 2, 0.0)
    k = kappa_analog([row("017,015,009,012", "018,015,007,012")], student, items)
    assert (k["cw"], k["wc"], k["kappa"]) == (2, 0, 1.0)
    # the running-sum task is one item per response
    k = kappa_analog([{"id": "b", "reference": "27", "chosen": [{"content": "Answer:27"}],
                       "rejected": [{"content": "Answer:26"}]}], {"b": {"response": "Answer:25"}}, task)
    assert (k["cw"], k["wc"], k["kappa"]) == (1, 0, 1.0)


def test_error_overlap_splits_a_rungs_wrong_items_by_the_students():
    from deltalearn.lab.items import LOOKUPS
    from deltalearn.lab.report import error_overlap

    ref = "58,07,33,12"
    student = {"a": {"response": "00,07,00,12"}, "b": {"response": "58,07,33,12"}}  # wrong on a's items 0, 2
    gen = lambda resp: {"id": "a", "reference": ref, "response": resp}
    # wrong exactly where the student is: 2/2 of the student's wrong items, 0/2 of its right ones
    assert error_overlap({"a": gen("11,07,11,12")}, student, LOOKUPS) == (1.0, 0.0)
    # one wrong item of each kind; prompt b (student all right) adds 4 right-student items, 1 of them wrong
    both = {"a": gen("11,99,33,12"), "b": dict(gen("58,07,33,99"), id="b")}
    assert error_overlap(both, student, LOOKUPS) == (0.5, 2 / 6)
    assert error_overlap({"c": gen(ref)}, student, LOOKUPS) is None  # no shared prompt


def _mini_items_recipe() -> dict:
    return {"name": "mini-items", "kind": "lab",
            "train": {"lr": 3e-6, "min_lr_ratio": 1.0, "warmup_ratio": 0.0, "batch_size": 4, "micro_batch_size": 4,
                      "max_steps": 2, "max_len": 128, "precision": "fp32"},
            "experiment": {"task": "items", "pref_prompts": 16, "eval_prompts": 16, "max_new_tokens": 40,
                           "workers": 1, "drop_truncated": False, "main_chosen": "r3", "main_rejected": "r2",
                           "self_weaker": "r1", "ladder": dict(MINI_LADDER, name="mini-items")}}


@pytest.fixture(scope="module")
def mini_items_lab(tmp_path_factory):
    from deltalearn.lab.ladder import LadderConfig, build_ladder

    home = tmp_path_factory.mktemp("labhome-items")
    cfg = LadderConfig.from_dict(dict(MINI_LADDER, name="mini-items"))
    cfg.task = "items"
    return home, build_ladder(cfg, home, progress=False)


def test_mini_items_lab_end_to_end(mini_items_lab, tmp_path, monkeypatch):
    """A miniature `deltalearn lab` on the items task: per-item utility in every eval, pairs graded by the
    fraction right; the running-sum ladder's folder is left alone."""
    from deltalearn.lab.experiments import run_lab
    from deltalearn.recipe import load_recipe

    home, rec = mini_items_lab
    assert rec["config"]["task"] == "items" and (home / "mini-items" / "student" / "config.json").exists()
    assert not (home / "ladder.json").exists()
    curve = rec["curves"][0]["curve"]
    assert curve[-1]["loss"] < 2.5
    monkeypatch.setenv("DELTALEARN_LAB_DIR", str(home))
    data = _mini_items_recipe()
    run_lab(load_recipe(data=data), tmp_path / "run", progress=False)
    ev = json.loads((tmp_path / "run" / "eval" / "main-dpo_norm.json").read_text())
    assert ev["metrics"]["utility/item_accuracy"]["n"] == 16
    pairs = [json.loads(x) for x in (tmp_path / "run" / "pairs" / "main-dpo_norm.jsonl").read_text().splitlines()]
    from deltalearn.lab.items import DIGIT_SUMS as items

    assert all(r["chosen_score"] == items.grade(r["chosen"][-1]["content"], r["reference"]) for r in pairs)
    gold = [json.loads(x) for x in (tmp_path / "run" / "pairs" / "plateau-sft-gold.jsonl").read_text().splitlines()]
    assert all(items.grade(r["chosen"][0]["content"], items.parse_prompt(r["prompt"][0]["content"]).answer) == 1.0
               for r in gold)


@pytest.mark.slow
def test_mini_items_sweep_reports_the_kappa_analog(mini_items_lab, tmp_path, monkeypatch):
    from deltalearn.lab.experiments import run_lab
    from deltalearn.recipe import load_recipe

    monkeypatch.setenv("DELTALEARN_LAB_DIR", str(mini_items_lab[0]))
    res = run_lab(load_recipe(data=_mini_items_recipe()), tmp_path / "sweep", sweep=True, progress=False)
    summary = next(t for t in res["tables"] if t["title"].startswith("Sweep summary"))
    assert any(r[0] == "Pearson r (kappa analog, gain)" for r in summary["rows"])
    sweep = next(t for t in res["tables"] if t["title"].startswith("Sweep: every"))
    assert len(sweep["rows"]) == 3 and "kappa analog" in sweep["columns"][4]
    assert any(p["path"].endswith("kappa.png") for p in res["plots"])
    # the audit reads the sweep's points with the task's own grader (item_accuracy here, not exact_answer)
    assert res["sweep_points"]["quality"] == "item_accuracy" and len(res["sweep_points"]["points"]) == 3


def test_audit_of_lab_pairs_matches_the_labs_own_delta(mini_lab, tmp_path, monkeypatch):
    """`deltalearn audit` on lab pairs with a lab student: its exact_answer delta is the lab's paired delta (one
    grader), and the lab student answers and scores the sampled pairs."""
    from deltalearn.audit import audit_pairs
    from deltalearn.generate import generate_responses
    from deltalearn.io import write_jsonl_atomic
    from deltalearn.lab.experiments import make_pair_rows

    monkeypatch.setenv("DELTALEARN_LAB_DIR", str(mini_lab[0]))
    prompts = task.prompt_rows(task.sample_problems("pref", 24, seed=0))
    gens = {r: {g["id"]: g for g in generate_responses(f"lab:mini/{r}", prompts, max_new_tokens=24, temperature=1.0,
                                                       seed=0, precision="fp32", progress=False)}
            for r in ("r3", "r1")}
    rows, stats = make_pair_rows(gens["r3"], gens["r1"], chosen_model="r3", rejected_model="r1", rule="sweep",
                                 drop_truncated=False)
    assert rows
    write_jsonl_atomic(tmp_path / "pairs.jsonl", rows)
    a = audit_pairs(tmp_path / "pairs.jsonl", student="lab:mini/student", utility="exact_answer", sample=8,
                    max_new_tokens=24)
    assert a["delta"]["stats"]["delta_mean"] == pytest.approx(stats["delta"])
    assert a["delta"]["stats"]["chosen_mean"] == pytest.approx(stats["chosen_acc"])
    assert a["weakness"]["n"] == min(8, len(rows)) and a["student_view"]["n"] == min(8, len(rows))
    assert (a["health"]["truncated_chosen"], a["health"]["truncated_rejected"]) == (
        sum(g["truncated"] for g in gens["r3"].values() if g["id"] in {r["id"] for r in rows}),
        sum(g["truncated"] for g in gens["r1"].values() if g["id"] in {r["id"] for r in rows}))


def test_teacher_pool_trains_seeded_copies_and_never_pairs_one_run_with_itself(mini_lab, tmp_path, monkeypatch):
    """ladder.teacher_pool: each teacher run gets seeded copies with their own rungs; a pooled rung answers the
    pref prompts from its copies in turn, the rejected side one copy on, so no pair has both sides from one run.
    teacher_pool 1 leaves the ladder's cache key as it was."""
    import shutil

    from deltalearn.lab.experiments import Lab
    from deltalearn.lab.ladder import LadderConfig, build_ladder
    from deltalearn.recipe import load_recipe

    home = tmp_path / "home"
    shutil.copytree(mini_lab[0], home)
    ladder = dict(MINI_LADDER, teacher_pool=2)
    rec = build_ladder(LadderConfig.from_dict(ladder), home, progress=False)
    assert not rec["cached"] and rec["config_hash"] != mini_lab[1]["config_hash"]
    assert rec["pool"]["r2"] == ["r2", "r2s1"] and [r["name"] for r in rec["pool_rungs"]] == ["r1s1", "r2s1", "r3s1"]
    assert {r["run"] for r in rec["pool_rungs"]} == {"as1"} and {r["run"] for r in rec["rungs"]} == {"a"}
    copy = next(c for c in rec["curves"] if c["run"]["name"] == "as1")
    assert copy["run"]["seed"] == 1 and (home / "mini" / "r3s1" / "config.json").exists()
    # the seed-0 run is the cached one, not retrained; the copy learned on its own
    assert rec["curves"][0]["curve"] == mini_lab[1]["curves"][0]["curve"]
    assert [p["loss"] for p in copy["curve"]] != [p["loss"] for p in rec["curves"][0]["curve"]]
    assert build_ladder(LadderConfig.from_dict(MINI_LADDER), home, progress=False)["config_hash"] == \
        mini_lab[1]["config_hash"]

    monkeypatch.setenv("DELTALEARN_LAB_DIR", str(home))
    build_ladder(LadderConfig.from_dict(ladder), home, progress=False)  # ladder.json back to the pooled record
    recipe = load_recipe(data={"name": "pool", "kind": "lab", "train": {"precision": "fp32"},
                               "experiment": {"pref_prompts": 12, "eval_prompts": 4, "dev_prompts": 4,
                                              "max_new_tokens": 24, "workers": 1, "main_chosen": "r3",
                                              "main_rejected": "r2", "self_weaker": "r1", "ladder": ladder}})
    lab = Lab(recipe, tmp_path / "run", progress=False)
    lab.prepare()
    lab.generate([("r3", 1.0, 0), ("r2", 1.0, 0)])
    chosen, rejected = lab.responses("r3"), lab.responses("r2", side=1)
    ids = [json.loads(x)["id"] for x in (tmp_path / "run" / "prompts.jsonl").read_text().splitlines()]
    assert [chosen[i]["model"] for i in ids] == ["lab:mini/r3", "lab:mini/r3s1"] * 6
    assert [rejected[i]["model"] for i in ids] == ["lab:mini/r2s1", "lab:mini/r2"] * 6


def test_a_pool_copy_without_a_checkpoint_near_a_target_is_an_error():
    """The measured case: a d64 seed that rose 25% -> 65% -> 98% dev in 40 steps has no checkpoint near 55%, so its
    '55%' rung would be a 98% model in a weak rung; check_pool refuses, naming the copy; a copy that tracks the
    targets passes."""
    from deltalearn.lab.ladder import check_pool, select_rungs

    def curve(name, accs):
        return {"run": {"name": name}, "curve": [{"step": 20 * (i + 1), "dev_acc": a, "path": f"{name}/{i}"}
                                                 for i, a in enumerate(accs)]}

    seed0 = curve("a", [0.0, 0.1, 0.2, 0.35, 0.52, 0.7, 0.9, 1.0])
    student = curve("b", [0.5, 0.9])
    tracks = curve("as1", [0.0, 0.12, 0.23, 0.38, 0.56, 0.69, 0.89, 1.0])
    jumps = curve("as2", [0.0, 0.05, 0.11, 0.25, 0.65, 0.98, 1.0, 1.0])
    targets = [0.1, 0.25, 0.4, 0.55, 0.7]
    curves = [seed0, student, tracks, jumps]
    rungs = select_rungs(curves, targets, "b", ["a"])
    ok = [dict(r, name=f"{r['name']}s1") for r in select_rungs(curves, targets, "b", ["as1"])]
    check_pool(rungs, ok, curves, 0.1)
    bad = [dict(r, name=f"{r['name']}s2") for r in select_rungs(curves, targets, "b", ["as2"])]
    with pytest.raises(ConfigError, match=r"rung r3s2 \(run as2 step 100\) is at 65.0% dev against r3's 35.0%"):
        check_pool(rungs, ok + bad, curves, 0.1)
