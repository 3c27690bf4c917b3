"""`deltalearn run RECIPE`: hand a recipe to the driver of its kind (pipeline, sections, lab, sweep), or print its
plan with `--dry-run`. The top of the import graph: it imports every driver, and no driver or stage imports it.
"""

from __future__ import annotations

from deltalearn.recipe import ConfigError, Recipe, load_recipe


def run_recipe(recipe: Recipe, *, progress: bool = True, fallback_checkpoint: bool = False):
    """Dispatch on the recipe's kind."""
    if recipe.kind == "pipeline":
        from deltalearn.pipeline import run_pipeline

        return run_pipeline(recipe, progress=progress, fallback_checkpoint=fallback_checkpoint)
    if recipe.kind == "sections":
        from deltalearn.experiments.sections import run_sections

        return run_sections(recipe, progress=progress)
    if recipe.kind == "lab":
        from deltalearn.lab.experiments import run_lab_recipe

        return run_lab_recipe(recipe)
    if recipe.kind == "sweep":
        from deltalearn.sweep import run_sweep

        return run_sweep(recipe, progress=progress)
    raise ConfigError(f"unknown recipe kind {recipe.kind!r}")


def add_cli_args(p) -> None:
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.beta=5 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the recipe and print the plan and compute estimate; load no model")
    p.add_argument("--fallback-checkpoint", action="store_true",
                   help="if an arm's latest checkpoint is corrupt, set it aside and resume from the previous good one")
    from deltalearn.cliargs import add_no_progress

    add_no_progress(p)


def run_cli(args) -> int:
    from deltalearn.recipe import blame

    recipe = load_recipe(args.recipe, args.overrides)
    try:
        from deltalearn.dryrun import check_recipe

        check_recipe(recipe)  # what would fail after generating or training fails now (and in --dry-run)
        if args.dry_run:
            from deltalearn.plan import format_plan, plan

            print(format_plan(plan(recipe)))
            return 0
        run_recipe(recipe, progress=not args.no_progress, fallback_checkpoint=args.fallback_checkpoint)
    except ConfigError as e:  # experiment settings are checked by their module: name the file (or --set) here too
        raise ConfigError(blame(str(e), args.recipe, args.overrides)) from None
    return 0
