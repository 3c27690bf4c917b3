"""The bold-sections experiment (paper Experiment 1): prompts, y_k construction, recipes, tables; a slow miniature run."""

import hashlib
import itertools
import json
import re
from pathlib import Path

import pytest

from deltalearn.experiments import sections as S
from deltalearn.recipe import ConfigError, load_recipe
from deltalearn.utility import bold_sections, response_words, distinct_headers, header_lines

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "src" / "deltalearn" / "data" / "sections_prompts.jsonl"
STOP = set("a an the and or of to for in on at my i do how can what is are with as by from into it its why does "
           "plan compare explain".split())


def _rows():
    return [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]


def _content_words(text):
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP}


# ------------------------------------------------------------------------------------------------ prompts


def test_prompt_set_shape_and_documented_split():
    rows = _rows()
    assert len(rows) >= 300
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["category"] for r in rows} == {"howto", "compare", "explain", "plan"}
    assert {r["split"] for r in rows} == {"train", "eval"}
    # the documented rule: in each category, the 20 prompts with the smallest sha256 of their text are eval
    for cat in ("howto", "compare", "explain", "plan"):
        texts = [r["prompt"] for r in rows if r["category"] == cat]
        expected = set(sorted(texts, key=lambda t: hashlib.sha256(t.encode()).hexdigest())[:20])
        assert {r["prompt"] for r in rows if r["category"] == cat and r["split"] == "eval"} == expected


def test_prompt_splits_do_not_overlap_and_have_no_near_duplicates():
    rows = _rows()
    norm = [re.sub(r"[^a-z0-9 ]", "", r["prompt"].lower()).strip() for r in rows]
    assert len(set(norm)) == len(norm), "two prompts are the same after normalization"
    train = {n for n, r in zip(norm, rows) if r["split"] == "train"}
    held = {n for n, r in zip(norm, rows) if r["split"] == "eval"}
    assert not train & held
    words = [_content_words(r["prompt"]) for r in rows]
    worst = max(len(a & b) / len(a | b) for a, b in itertools.combinations(words, 2))
    assert worst < 0.6, f"near-duplicate prompts (content-word Jaccard {worst:.2f})"


def test_load_split_prompts_is_deterministic_and_sized():
    r = load_recipe(ROOT / "recipes" / "sections-demo.yaml")
    settings = S.settings_from(r)
    train, habit, held = S.load_split_prompts(r, settings)
    assert len(train) == settings.train_prompts and len(held) == settings.eval_prompts
    assert len(habit) == (settings.habit_prompts or 0)
    ids = lambda rows: {x["id"] for x in rows}  # noqa: E731
    assert not ids(train) & ids(held) and not ids(habit) & ids(train) and not ids(habit) & ids(held)
    assert S.load_split_prompts(r, settings) == (train, habit, held)
    assert len({x["category"] for x in train}) == 4  # the seeded order interleaves the categories


def _split(*overrides):
    recipe = load_recipe(ROOT / "recipes" / "sections-demo.yaml", list(overrides))
    return S.load_split_prompts(recipe, S.settings_from(recipe))


def test_dev_split_is_unused_train_prompts():
    """eval_split=dev evaluates on train-split prompts that no arm trains on, never on held-out ones."""
    train, habit, dev = _split("experiment.eval_split=dev")
    _, _, held = _split()
    ids = lambda rows: {x["id"] for x in rows}  # noqa: E731
    assert len(dev) == len(held) and train == _split()[0]
    assert not ids(dev) & ids(train) and not ids(dev) & ids(held) and not ids(dev) & ids(habit)
    with pytest.raises(ConfigError, match="eval_split=dev needs 200 train-split prompts beyond the 164"):
        _split("experiment.eval_split=dev", "experiment.train_prompts=100", "experiment.eval_prompts=200")
    with pytest.raises(ConfigError, match="eval_split"):
        _split("experiment.eval_split=test")


def test_habit_prompts_are_their_own():
    """The habit stage trains on prompts that neither the arms, the dev split nor the held-out split contain."""
    train, habit, dev = _split("experiment.eval_split=dev")
    _, habit2, held = _split()
    ids = lambda rows: {x["id"] for x in rows}  # noqa: E731
    assert len(habit) == 64 and habit == habit2
    assert not ids(habit) & (ids(train) | ids(dev) | ids(held))
    with pytest.raises(ConfigError, match="habit_prompts=300 needs that many"):
        _split("experiment.habit_prompts=300")
    with pytest.raises(ConfigError, match="habit_prompts is set but experiment.habit_k is not"):
        _split("experiment.habit_k=null")
    with pytest.raises(ConfigError, match="eval_split=dev needs 150 train-split prompts beyond the 96"):
        _split("experiment.eval_split=dev", "experiment.eval_prompts=150")


def test_header_density_is_per_100_words():
    text = "**One**\nfirst part of it.\n\n**Two**\nsecond part here now."
    assert bold_sections(text) == 2
    assert S.headers_per_100_words(text) == pytest.approx(100 * 2 / response_words(text))
    assert S.headers_per_100_words("") == 0.0


# ------------------------------------------------------------------------------------------------ y_k

# Answers in the styles SmolLM2-135M-Instruct writes (paragraphs; numbered lists with bold lead-ins; its own
# header lines; cut off at the token cap mid-word or inside a bold span), plus a few hard shapes.
ANSWERS = [
    # plain paragraphs
    "Inflation is a general rise in prices across an economy. When demand grows faster than supply, sellers raise "
    "prices.\n\nCosts matter too: if wages or energy get more expensive, firms pass those costs on. Finally, when a "
    "central bank creates money quickly, each unit of money buys less.",
    # list with bold lead-ins and a truncated tail inside a bold span
    "Here are some tips to improve your sleep:\n\n1. **Keep a schedule**: Go to bed at the same time every night.\n"
    "2. **Limit screens**: Blue light delays melatonin.\n3. **Watch caffeine**: Avoid coffee after 2 pm.\n"
    "4. **Make it dark**: Use curtains or a mask.\n5. **Relax first**: Read or stretch before bed.\n\nBy following "
    "these tips you will **sleep bet",
    # the model's own header lines (to be replaced), and a '#' heading and bold words inside sentences
    "**Introduction**\nRenting and buying both have merits.\n\n**Renting**\nRenting is **flexible** and needs a "
    "small deposit.\n\n## Buying\nBuying builds equity over time, but it ties you to one place.\n\n**Conclusion:**\n"
    "Choose based on how long you will stay.",
    # one long line, no paragraph breaks
    "Solar panels are made of silicon cells that absorb sunlight and knock electrons loose, which creates a direct "
    "current that an inverter turns into the alternating current your home uses, and any extra power can be sent to "
    "the grid or stored in a battery for the evening.",
    # bullet list with dashes and nested indentation
    "To plan a trip to Rome:\n- Day 1: the Colosseum and the Forum.\n  - Book tickets online.\n- Day 2: the Vatican "
    "Museums and St. Peter's.\n- Day 3: Trastevere, the Pantheon and Piazza Navona.\nEnjoy gelato every afternoon!",
    # underscores, an unclosed **, and a repeated first word
    "The __main__ idea is simple. The first step is to read. The second step is to write. The third step is to **"
    "revise. The fourth step is to share. The fifth step is to rest.",
    # very short
    "Yes, it works.",
]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 9, 12])
@pytest.mark.parametrize("variant", [0, 1])
@pytest.mark.parametrize("truncated", [False, True])
def test_with_k_sections_gives_exactly_k(k, variant, truncated):
    for text in ANSWERS:
        y = S.with_k_sections(text, k, variant=variant, truncated=truncated)
        body_words = S._body(text, truncated).split()
        if len(body_words) < k:
            assert y is None
            continue
        assert bold_sections(y) == k, y
        assert distinct_headers(y) == k, y  # no repeated titles within one answer
        # nothing of the answer is lost or reordered: drop our header lines and compare the words
        kept = [ln for ln in y.splitlines() if bold_sections(ln) == 0]
        assert " ".join(kept).replace("**", "").replace("__", "").split() == \
            " ".join(body_words).replace("**", "").replace("__", "").split()


def test_with_k_sections_drops_own_headers_and_keeps_bold_words():
    y = S.with_k_sections(ANSWERS[2], 2)
    assert "Introduction" not in header_lines(y) and "Renting" not in header_lines(y)
    assert "**flexible**" in y  # bold words inside a sentence stay
    y = S.with_k_sections(ANSWERS[1], 3)
    assert "1. **Keep a schedule**: Go to bed" in y  # bold lead-ins of list items stay (not header lines)


def test_truncated_answer_is_cut_back_to_a_full_sentence():
    y = S.with_k_sections(ANSWERS[1], 3, truncated=True)
    assert y.rstrip().endswith("Read or stretch before bed.")
    assert "sleep bet" not in y
    assert "sleep bet" in S.with_k_sections(ANSWERS[1], 3, truncated=False)


def test_sections_are_roughly_equal_and_alt_variant_differs():
    text = "\n".join(f"Sentence number {i} says something useful about the topic." for i in range(12))
    y = S.with_k_sections(text, 3)
    sizes = [len(part.split()) for part in re.split(r"\*\*[^*\n]+\*\*\n", y) if part.strip()]
    assert len(sizes) == 3 and max(sizes) - min(sizes) <= 9  # 4 lines of ~9 words each
    alt = S.with_k_sections(text, 3, variant=1)
    assert bold_sections(alt) == 3 and alt != y
    assert header_lines(alt) != header_lines(y)


def test_alt_variant_differs_even_when_lines_allow_one_partition():
    """Three lines into three sections has one line partition: y_3' then cuts at sentences, and when each line is
    one sentence, at words -- never inside a bold span -- so the tie never pairs a text with itself."""
    by_sentence = "Plan the week first. Then shop once.\nCook in batches on Sunday.\nFreeze what you will not eat soon."
    by_word = "Always **keep a simple schedule** for the whole family\nCook in batches on Sunday\nFreeze the rest"
    for text in (by_sentence, by_word):
        y, alt = S.with_k_sections(text, 3), S.with_k_sections(text, 3, variant=1)
        assert bold_sections(alt) == 3 and alt != y
        body = lambda t: [w for ln in t.split("\n") if not ln.startswith("**") or not ln.endswith("**")
                          for w in ln.split()]
        assert body(alt) == body(y)  # the same words, only the section starts move
    assert "**keep a simple schedule**" in S.with_k_sections(by_word, 3, variant=1)


def test_titles_come_from_the_chunk_without_markdown():
    assert S._title("1. **Keep a schedule**: Go to bed", 0) == "Keep A Schedule"
    assert S._title("The first step is to read.", 0) == "The First Step"
    assert S._title("... !", 3) == "Part 4"


def test_sections_table_and_pairs():
    base = [{"id": f"p{i}", "prompt": f"Question {i}?", "response": ANSWERS[i], "truncated": i == 1}
            for i in range(len(ANSWERS))]
    table, dropped = S.build_sections_table(base, ["2_sections", "3_sections", "3_sections_alt", "9_sections"])
    assert dropped == ["p6"]  # "Yes, it works." has fewer than 9 words
    for r in table:
        assert [bold_sections(r[c]) for c in ("2_sections", "3_sections", "3_sections_alt", "9_sections")] == \
            [2, 3, 3, 9]
    pairs = S.arm_pairs(table, "3_sections", "2_sections", reverse=False, system_prompt="Use headers.")
    assert pairs[0]["prompt"][0] == {"role": "system", "content": "Use headers."}
    assert pairs[0]["prompt"][1]["role"] == "user"
    assert bold_sections(pairs[0]["chosen"][0]["content"]) == 3
    assert bold_sections(pairs[0]["rejected"][0]["content"]) == 2
    rev = S.arm_pairs(table, "3_sections", "2_sections", reverse=True, system_prompt=None)
    assert rev[0]["chosen"] == pairs[0]["rejected"] and rev[0]["prompt"] == [{"role": "user",
                                                                             "content": "Question 0?"}]
    sft = S.arm_pairs(table, "3_sections", None, reverse=False, system_prompt=None)
    assert "rejected" not in sft[0]


def test_other_columns_are_cut_from_the_second_answer():
    """`K_sections_other` is y_K of the prompt's second (sampled) answer: the tie of two different answers. A prompt
    without a usable second answer is dropped from every column, so all arms keep one prompt set."""
    base = [{"id": f"p{i}", "prompt": f"Question {i}?", "response": ANSWERS[i], "truncated": False}
            for i in range(3)]
    other = [{"id": "p0", "response": ANSWERS[3], "truncated": False},
             {"id": "p1", "response": "Yes.", "truncated": False}]  # p1's is too short, p2 has none
    table, dropped = S.build_sections_table(base, ["3_sections", "3_sections_other"], other)
    assert dropped == ["p1", "p2"] and [r["id"] for r in table] == ["p0"]
    assert table[0]["3_sections"] == S.with_k_sections(ANSWERS[0], 3)
    assert table[0]["3_sections_other"] == S.with_k_sections(ANSWERS[3], 3)
    assert bold_sections(table[0]["3_sections_other"]) == 3 and table[0]["3_sections_other"] != table[0]["3_sections"]
    assert S.column_k("3_sections_other") == (3, 0) and S.is_other("3_sections_other")
    assert S.arm_title("dpo_norm", "3_sections", "3_sections_other", False) == (
        "dpo_norm 3>3 (tied)", "y_3 > y_3 (2nd answer)")


def test_tied_pairs_have_no_systematic_side():
    """The tie's two variants differ in wording and boundaries; a fixed orientation would teach one over the other.
    Each pair's sides are drawn by a coin that depends only on (seed, id): stable under reordering, about half each."""
    table = [{"id": f"q{i}", "prompt": f"Q{i}?", "3_sections": f"A{i}", "3_sections_alt": f"B{i}"} for i in range(400)]
    pairs = S.arm_pairs(table, "3_sections", "3_sections_alt", reverse=False, system_prompt=None, tie_seed=0)
    swapped = [p["chosen_model"] == "3_sections_alt" for p in pairs]
    assert 160 < sum(swapped) < 240
    for p, r in zip(pairs, table):  # every pair keeps both texts, just ordered by its coin
        assert {p["chosen"][0]["content"], p["rejected"][0]["content"]} == {r["3_sections"], r["3_sections_alt"]}
    again = S.arm_pairs(table[::-1], "3_sections", "3_sections_alt", reverse=False, system_prompt=None, tie_seed=0)
    assert {p["id"]: p["chosen_model"] for p in again} == {p["id"]: p["chosen_model"] for p in pairs}
    other = S.arm_pairs(table, "3_sections", "3_sections_alt", reverse=False, system_prompt=None, tie_seed=1)
    assert [p["chosen_model"] for p in other] != [p["chosen_model"] for p in pairs]


# ------------------------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize("name", ["sections-demo.yaml", "sections-smollm2.yaml", "sections-llama3.2-3b.yaml"])
def test_shipped_recipes_validate(name):
    r = load_recipe(ROOT / "recipes" / name)
    S.settings_from(r)
    assert "3_sections" in S.needed_columns(r)


def test_full_recipe_has_the_papers_arms():
    r = load_recipe(ROOT / "recipes" / "sections-smollm2.yaml")
    titles = []
    for arm in r.arms:
        pair, train = S.arm_configs(r, arm)
        rejected = pair.rejected if train.loss != "sft" else None
        titles.append(S.arm_title(train.loss, pair.chosen, rejected, pair.control == "reverse")[0])
    assert titles == ["SFT on 2", "SFT on 3", "SFT on 9", "dpo_norm 3>2", "dpo_norm 2>3 (reversed)",
                      "dpo_norm 3>3 (tied)"]


def test_paper_settings_recipe():
    r = load_recipe(ROOT / "recipes" / "sections-llama3.2-3b.yaml")
    assert (r.train.loss, r.train.beta, r.train.lr, r.train.epochs, r.train.batch_size, r.train.max_pairs) == \
        ("dpo_norm", 5.0, 5e-7, 1, 32, 16384)
    sft = [S.arm_configs(r, a)[1] for a in r.arms if S.arm_configs(r, a)[1].loss == "sft"]
    assert sft and all(t.lr == 1e-6 and t.batch_size == 256 for t in sft)


@pytest.mark.parametrize("override, message", [
    ("experiment.train_prompt=8", "did you mean 'train_prompts'"),
    ("experiment.eval_prompts=0", "whole number >= 1"),
    ("pair.chosen=three", "not a sections column"),
    ("experiment.habit_k=0", "whole number >= 1 and <= 50"),
    ("experiment.habit_train={loss_rate: 1}", "did you mean"),
    ("experiment.eval_original=1", "true or false"),
    ("pair.rejected=3_sections", "identical texts give zero gradient"),
    ("pair.rejected=3_sections_alt", "add control: tie"),
    ("pair.rejected=3_sections_other", "add control: tie"),
    ("experiment.other_temperature=0", "other_temperature: expected a number > 0"),
    ("pair.control=tie", "tie has no meaning for SFT"),
    ("pair.rule=ladder", "use rule: columns"),
    ("eval.system_prompt=other", "same one"),
    ("generate.models=[other-model]", "leave generate.models empty"),
    ("kind=pipeline", "kind: sections"),
])
def test_bad_settings_are_clear_config_errors(override, message):
    r = load_recipe(ROOT / "recipes" / "sections-demo.yaml", [override])
    with pytest.raises(ConfigError, match=re.escape(message)):
        S.settings_from(r)


def test_habit_stage_settings():
    r = load_recipe(ROOT / "recipes" / "sections-demo.yaml")
    settings = S.settings_from(r)
    assert settings.habit_k == 6 and "6_sections" in S.needed_columns(r, settings)
    cfg = S.habit_config(r, settings)
    assert cfg.loss == "sft" and cfg.lr == settings.habit_train["lr"] and cfg.model == "smollm2-135m"
    r = load_recipe(ROOT / "recipes" / "sections-demo.yaml", ["experiment.habit_k=null"])
    with pytest.raises(ConfigError, match="habit_k is not"):
        S.settings_from(r)


def test_sft_with_reverse_is_refused():
    data = {"kind": "sections", "train": {"model": "smollm2-135m"}, "pair": {"rule": "columns"},
            "arms": [{"name": "x", "pair": {"chosen": "3_sections", "control": "reverse"}, "train": {"loss": "sft"}}]}
    with pytest.raises(ConfigError, match="reverse has no meaning for SFT"):
        S.settings_from(load_recipe(data=data))


def test_tie_needs_equal_k():
    data = {"kind": "sections", "train": {"model": "smollm2-135m"}, "pair": {"rule": "columns"},
            "arms": [{"name": "x", "pair": {"chosen": "3_sections", "rejected": "2_sections", "control": "tie"}}]}
    with pytest.raises(ConfigError, match=r"arms\[x\]\.pair\.control: tie needs two columns of the same k"):
        S.settings_from(load_recipe(data=data))


# ------------------------------------------------------------------------------------------------ report


def _record(label, title, values, base=None, **extra):
    rows = [{"id": str(i), "response": "\n".join(f"**H{j}**\ntext" for j in range(v)), "n_tokens": 10 + v}
            for i, v in enumerate(values)]
    rec = S.eval_record(label, title, rows, base, settings={"max_new_tokens": 64, "system_prompt": "s"})
    rec.update(extra)
    return rec, S.score_rows(rows)


def test_results_table_markdown_and_plot(tmp_path):
    base, base_scores = _record("base", "base", [2, 3, 4], kind="base")
    dpo, _ = _record("dpo", "dpo_norm 3>2", [5, 6, 7], base_scores, kind="pref", k_chosen=3, k_rejected=2,
                     trained_on="y_3 > y_2")
    assert dpo["paired_vs_base"]["bold_sections"] == {"mean": 3.0, "se": 0.0, "n": 3}
    table = S.results_table([base, dpo])
    assert table["columns"][2] == "bold sections"
    assert table["rows"][0][2] == "3.00 ± 0.58" and table["rows"][1][3] == "3.00 ± 0.00"
    md = S.markdown_table(table)
    assert md.splitlines()[0].startswith("| run | trained on | bold sections")
    assert len(md.splitlines()) == 4
    S.plot_sections([base, dpo], tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # two arms with one title (an lr grid) are told apart by their arm names; unique titles stay as they are
    dpo2, _ = _record("dpo-lr1e-5", "dpo_norm 3>2", [4, 6, 7], base_scores, kind="pref", k_chosen=3, k_rejected=2)
    assert [r[0] for r in S.results_table([base, dpo, dpo2])["rows"]] == [
        "base", "dpo_norm 3>2 (dpo)", "dpo_norm 3>2 (dpo-lr1e-5)"]


def test_delta_table_pairs_each_preference_arm_with_the_tie():
    base, base_scores = _record("base", "base", [5, 5, 5], kind="base")
    sft, _ = _record("sft-3", "SFT on 3", [3, 3, 3], base_scores, kind="sft")
    fwd, _ = _record("fwd", "dpo_norm 3>2", [4, 6, 8], base_scores, kind="pref", trained_on="y_3 > y_2")
    rev, _ = _record("rev", "dpo_norm 2>3 (reversed)", [1, 2, 0], base_scores, kind="rev")
    tie, _ = _record("tie", "dpo_norm 6>6 (tied)", [2, 3, 4], base_scores, kind="tie", trained_on="y_6 > y_6'")
    assert S.delta_table([base, sft, fwd, rev]) is None  # no tied arm: nothing to isolate the delta with
    t = S.delta_table([base, sft, fwd, rev, tie])
    # forward - tie per prompt: 2, 3, 4 -> mean 3, s.e. 0.58; reversed - tie: -1, -1, -4 -> mean -2, s.e. 1.0
    assert [r[0] for r in t["rows"]] == ["dpo_norm 3>2", "dpo_norm 2>3 (reversed)"]
    assert [r[2] for r in t["rows"]] == ["3.00 ± 0.58", "-2.00 ± 1.00"] and t["rows"][0][3] == 3
    assert "(y_6 > y_6')" in t["note"] and "3-section" not in t["note"]  # the footer names the tie's own texts


# ------------------------------------------------------------------------------------------------ slow: miniature run


@pytest.mark.slow
def test_miniature_demo_pipeline(tmp_path):
    """The demo's whole pipeline on the real SmolLM2 at a miniature size: artifacts, contract and rerun reuse."""
    overrides = [f"output_dir={tmp_path / 'run'}", "experiment.train_prompts=8", "experiment.eval_prompts=4",
                 "generate.max_new_tokens=48", "eval.max_new_tokens=48", "train.max_steps=2", "train.batch_size=4",
                 "train.micro_batch_size=4", "train.max_len=160"]
    overrides += ["experiment.habit_train.max_steps=1", "experiment.eval_original=true"]
    recipe = load_recipe(ROOT / "recipes" / "sections-demo.yaml", overrides)
    results = S.run_sections(recipe, progress=False)
    run = tmp_path / "run"
    assert results["experiment"] == "sections"
    assert json.loads((run / "results.json").read_text())["tables"][0]["rows"] == results["tables"][0]["rows"]
    assert [r[0] for r in results["tables"][0]["rows"]] == ["smollm2-135m (before habit)", "base", "SFT on 3",
                                                             "dpo_norm 3>2"]
    assert (run / "arms" / "habit" / "COMPLETED").exists()
    assert json.loads((run / "eval" / "base.json").read_text())["model"] == str(run / "arms" / "habit" / "model")
    assert (run / "sections.png").exists()
    for label in ("base", "sft-3", "dpo-3-over-2"):
        rec = json.loads((run / "eval" / f"{label}.json").read_text())
        assert rec["metrics"]["bold_sections"]["n"] == 4
    for row in map(json.loads, (run / "data" / "sections.jsonl").read_text().splitlines()):
        assert bold_sections(row["3_sections"]) == 3 and bold_sections(row["2_sections"]) == 2
    assert (run / "arms" / "dpo-3-over-2" / "COMPLETED").exists()
    again = S.run_sections(recipe, progress=False)  # everything reused: same table
    assert again["tables"][0]["rows"] == results["tables"][0]["rows"]
    changed = load_recipe(ROOT / "recipes" / "sections-demo.yaml", overrides + ["train.lr=1e-6"])
    with pytest.raises(ConfigError, match="trained with other settings"):
        S.run_sections(changed, progress=False)
