"""Every paper recipe against the authors' reference runs (src/deltalearn/data/reference_settings.yaml, read from
scottgeng00/delta_learning @ bd03051), and docs/reference-settings.md against that table."""

import re
from pathlib import Path

import pytest

from deltalearn.plan import format_plan, plan
from deltalearn.recipe import arm_configs, load_recipe
from deltalearn.reference import markdown, problems, recipe_arms, reference_run, table

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ("tulu3-8b-*.yaml", "olmo2-7b-*.yaml", "llama3.1-8b-self-over-weaker.yaml", "qwen2.5-ladder-sweep.yaml",
            "sections-llama3.2-3b.yaml")
PAPER_RECIPES = sorted(p.name for pattern in PATTERNS for p in (ROOT / "recipes").glob(pattern))


def _recipe(name):
    return load_recipe(ROOT / "recipes" / name)


def _arm(recipe, name):
    arm = next(a for a in recipe_arms(recipe) if a.name == name)
    return arm_configs(recipe, arm)


def test_every_paper_recipe_is_in_the_table():
    assert len(PAPER_RECIPES) == 7
    named = sorted(Path(e["file"]).name for e in table()["recipes"].values())
    assert named == PAPER_RECIPES
    for name, e in table()["recipes"].items():
        assert _recipe(Path(e["file"]).name).name == name
        for run_id in e["arms"].values():
            assert reference_run(run_id)["file"].startswith("configs/")


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipe_equals_its_reference_runs_or_declares_why(name):
    recipe = _recipe(name)
    assert problems(recipe) == []
    # every arm the recipe trains has its reference run
    entry = table()["recipes"][recipe.name]
    assert sorted(a.name for a in recipe_arms(recipe)) == sorted(entry["arms"])
    # ... and each declared departure is also a comment in the recipe, beside the value
    declared = set(entry.get("departures") or {})
    declared |= {f for fs in (entry.get("arm_departures") or {}).values() for f in fs}
    text = (ROOT / "recipes" / name).read_text()
    commented = {f for m in re.finditer(r"#.*?departures? \(([^)]*)\)", text) for f in re.split(r"[,/ ]+", m[1]) if f}
    assert declared <= commented, f"{name}: departures without a comment in the recipe: {declared - commented}"


def test_reference_values_spot_checked_against_the_authors_files():
    """Values read by hand from the reference's config files, so a wrong table cannot pass with its recipes."""
    r = _recipe("llama3.1-8b-self-over-weaker.yaml")
    _, sft = _arm(r, "sft-self")
    assert (sft.loss, sft.lr, sft.batch_size, sft.micro_batch_size, sft.epochs, sft.max_pairs) == \
        ("sft", 1e-7, 256, 2, 2, 50000)
    _, dpo = _arm(r, "dpo-reversed")
    assert (dpo.lr, dpo.beta, dpo.max_pairs, dpo.seed) == (1e-8, 5, 50000, 42)
    assert table()["runs"]["self_improve/dpo_chosen-self-gen_rejected-weaker"]["data"] == \
        "scottgeng00/delta_learning_tulu3-sft-mix_model_ladder"

    s = _recipe("sections-llama3.2-3b.yaml")
    assert (_arm(s, "dpo-3-over-2")[1].lr, _arm(s, "dpo-3-over-2")[1].beta) == (5e-7, 5)
    assert (_arm(s, "dpo-reversed-2-over-3")[1].lr, _arm(s, "dpo-reversed-2-over-3")[1].beta) == (1e-7, 10)
    assert (_arm(s, "dpo-tied-3-vs-3")[1].lr, _arm(s, "dpo-tied-3-vs-3")[1].beta) == (1e-7, 5)
    assert (_arm(s, "sft-9")[1].lr, _arm(s, "sft-9")[1].batch_size, _arm(s, "sft-9")[1].epochs) == (1e-6, 256, 1)

    w = _recipe("qwen2.5-ladder-sweep.yaml")
    q = "Qwen_Qwen2.5-{}-Instruct".format
    cases = {("32B", "7B"): (5e-8, 5), ("14B", "7B"): (5e-8, 5), ("7B", "3B"): (1e-7, 5), ("3B", "1.5B"): (1e-7, 10),
             ("72B", "7B"): (1e-7, 10), ("32B", "14B"): (7e-8, 5)}
    for (c, rj), want in cases.items():
        t = _arm(w, f"{q(c)}-over-{q(rj)}")[1]
        assert (t.lr, t.beta) == want, (c, rj)
    assert _arm(w, f"{q('1.5B')}-over-{q('0.5B')}")[1].seed == 8  # the one reference file that sets a seed
    assert sum(_arm(w, a.name)[1].lr == 5e-8 and _arm(w, a.name)[1].beta == 5
               for a in recipe_arms(w) if "-over-" in a.name) == 2
    for rung, lr, epochs in (("0.5B", 5e-6, 2), ("1.5B", 5e-6, 2), ("3B", 1e-6, 1), ("72B", 1e-6, 2)):
        t = _arm(w, f"sft-{q(rung)}")[1]
        assert (t.loss, t.lr, t.epochs, t.batch_size, t.micro_batch_size) == ("sft", lr, epochs, 256, 2)

    for name in PAPER_RECIPES:  # the reference's shared settings
        recipe = _recipe(name)
        for arm in recipe_arms(recipe):
            pair, t = arm_configs(recipe, arm)
            seed = 8 if arm.name == f"{q('1.5B')}-over-{q('0.5B')}" else 42
            assert (t.seed, t.truncation, t.max_len, tuple(t.adam_betas), t.min_lr_ratio) == \
                (seed, "eos_at_cut", 2048, (0.9, 0.95), 0.1), (name, arm.name)
            if recipe.kind != "sections":
                assert pair.drop_truncated is False, (name, arm.name)


def test_reference_settings_md_is_generated_from_the_table():
    assert (ROOT / "docs" / "reference-settings.md").read_text() == markdown(), \
        "regenerate: python -m deltalearn.reference > docs/reference-settings.md"


def test_dry_run_prints_the_reference_and_every_departure():
    recipe = _recipe("sections-llama3.2-3b.yaml")
    text = format_plan(plan(recipe))
    assert "Reference runs (scottgeng00/delta_learning @ bd03051" in text
    assert "arm dpo-reversed-2-over-3 <- configs/dpo/exp_num_sections/" in text
    assert "departs: data: ours scottgeng00/delta_learning_num_sections, reference" in text
    assert "NO REASON" not in text
    # an undeclared change is named as such
    text = format_plan(plan(load_recipe(ROOT / "recipes" / "sections-llama3.2-3b.yaml", ["train.lr=1e-6"])))
    assert "departs: lr: ours 1e-06, reference 5e-07 -- NO REASON DECLARED" in text
