"""`deltalearn sweep RECIPE` (or `kind: sweep`): every chosen>rejected pair of a model ladder, one arm each.

The paper's analysis (Section 5) tunes the same student on each of the 21 pairs of the Qwen2.5 ladder and plots
the gain against the delta: the mean quality of chosen minus rejected. Here the ladder is `generate.models`,
ordered by size (`pair.sizes`, else parameter counts); each pair becomes an arm with rule `columns`, the
pipeline runs them all, and `results.json` gets the gain-vs-delta table (the report draws the scatter).
Quality is measured by `experiment.utility` (e.g. bold_sections, exact_answer) on the pairs themselves.
"""

from __future__ import annotations

import copy
from pathlib import Path

from deltalearn.io import read_json, write_json_atomic
from deltalearn.recipe import Arm, ConfigError, Recipe, load_recipe


def ladder_order(recipe: Recipe) -> list[str]:
    """Models from strongest to weakest by stated size, else by parameter count."""
    models = list(recipe.generate.models)
    if len(models) < 2:
        raise ConfigError("generate.models: a sweep needs at least 2 models")
    sizes = {}
    for m in models:
        if m in recipe.pair.sizes:
            sizes[m] = recipe.pair.sizes[m]
        else:
            from deltalearn.models import parameter_count

            sizes[m] = parameter_count(m)
    if len(set(sizes.values())) < len(sizes):
        raise ConfigError(f"pair.sizes: two ladder models have the same size {sizes}; state distinct sizes")
    return sorted(models, key=lambda m: -sizes[m])


def arm_name(chosen: str, rejected: str) -> str:
    from deltalearn.generate import model_slug

    return f"{model_slug(chosen)}-over-{model_slug(rejected)}"


def expand_sweep(recipe: Recipe) -> Recipe:
    """The recipe with one arm per (bigger, smaller) pair, each pairing by the `columns` rule. A recipe arm named
    like a pair's arm adds its overrides to it (the paper tuned lr and beta per pair); other recipe arms (e.g. SFT
    baselines per rung) follow the pairs unchanged."""
    ladder = ladder_order(recipe)
    out = copy.deepcopy(recipe)
    given = {a.name: a for a in recipe.arms}
    arms = []
    for i, c in enumerate(ladder):
        for r in ladder[i + 1:]:
            extra = given.pop(arm_name(c, r), None) or Arm()
            arms.append(Arm(name=arm_name(c, r), pair={**extra.pair, "rule": "columns", "chosen": c, "rejected": r},
                            train=dict(extra.train)))
    out.arms = arms + [copy.deepcopy(a) for a in given.values()]
    return out


def sweep_table(run_dir: Path, recipe: Recipe, metric: str | None) -> dict:
    """Gain (eval metric, arm vs base) against delta (utility of chosen minus rejected in the arm's pairs)."""
    from deltalearn.io import read_table
    from deltalearn.pairs import delta_stats
    from deltalearn.report import gain

    utility = recipe.experiment.get("utility")
    base_path = run_dir / "eval" / "base.json"
    base = read_json(base_path) if base_path.exists() else None
    rows = []
    for arm in recipe.arms:
        pairs_dir = run_dir / f"pairs-{arm.name}"
        sft = arm.train.get("loss") == "sft"  # an SFT baseline: its pair set has no delta to plot
        stats = delta_stats(read_table(pairs_dir), utility=utility) if utility and not sft else {}
        after_path = run_dir / "eval" / f"{arm.name}.json"
        g = gain(base, read_json(after_path), metric) if (base and metric and after_path.exists()) else None
        rows.append([arm.name, arm.pair["chosen"], arm.pair["rejected"],
                     stats.get("delta_mean"), g["gain"] if g else None, g["se"] if g else None])
    return {"title": f"Gain in {metric or '(no eval metric)'} against the delta in {utility or '(no utility)'}",
            "columns": ["arm", "chosen", "rejected", "delta", "gain", "gain se"], "rows": rows,
            "note": "delta: mean utility of chosen minus rejected over the arm's pairs; gain: eval metric of the "
                    "tuned student minus the base student on the same prompts (paired s.e. where available)."}


def run_sweep(recipe: Recipe, *, progress: bool = True) -> Path:
    from deltalearn.pipeline import run_pipeline

    expanded = expand_sweep(recipe)
    expanded.kind = "pipeline"
    run_dir = run_pipeline(expanded, progress=progress)
    metric = recipe.experiment.get("metric") or (recipe.eval.utilities[0] if recipe.eval.utilities else None)
    table = sweep_table(run_dir, expanded, metric)
    write_json_atomic(run_dir / "results.json", {"experiment": "sweep", "tables": [table], "plots": [],
                                                 "quality": recipe.experiment.get("utility"), "metric": metric})
    from deltalearn.report import build_report

    print(f"report: {build_report([run_dir])}")
    return run_dir


def add_cli_args(p) -> None:
    p.add_argument("recipe", help="recipe YAML with generate.models as the ladder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.beta=5 (repeatable; keys: docs/config.md)")
    p.add_argument("--list", action="store_true", help="only print the arms the sweep would train")
    from deltalearn.cliargs import add_no_progress

    add_no_progress(p)


def run_cli(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if args.list:
        for arm in expand_sweep(recipe).arms:
            print(f"{arm.name}: chosen={arm.pair['chosen']} rejected={arm.pair['rejected']}")
        return 0
    run_sweep(recipe, progress=not args.no_progress)
    return 0
