"""`deltalearn lab`: build (or reuse) the tiny-lab ladder and run the paper's semantic-delta experiments on it.

    deltalearn lab                      # ladder + main recipe with controls + self-over-weaker -> runs/lab
    deltalearn lab --sweep              # every chosen > rejected rung pair + chosen-quality curves -> runs/lab-sweep
    deltalearn lab --ladder-only        # just train / show the ladder (lab:r1 ... lab:student)
    deltalearn lab --recipe recipes/lab-lookups.yaml --corrupt   # rung / own answers over corrupted copies
    deltalearn lab --set experiment.eval_prompts=1000 --out runs/lab-small
    deltalearn lab --recipe recipes/lab-items.yaml   # the items task (experiment.task: items) -> runs/lab-items
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

DEFAULT_RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "lab.yaml"


def add_cli_args(p) -> None:
    p.add_argument("--recipe", default=None, help=f"lab recipe YAML (default: {DEFAULT_RECIPE.name} in the repo's "
                   "recipes/ folder)")
    p.add_argument("--sweep", action="store_true", help="run the all-pairs sweep and chosen-quality curves "
                   "instead of the main recipe")
    p.add_argument("--ladder-only", action="store_true", help="only build (or show) the ladder")
    p.add_argument("--corrupt", action="store_true", help="items tasks: a rung's and the student's answers over "
                   "their corrupted copies (m wrong items), with controls -> runs/NAME-corrupt (issue 32)")
    p.add_argument("--out", default=None, help="run folder (default: runs/NAME, runs/NAME-sweep with --sweep)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set experiment.workers=1 (repeatable)")
    p.add_argument("--render", action="store_true", help="only rewrite results.json and the plots of a finished "
                   "run from its files")
    from deltalearn.cliargs import add_no_progress

    add_no_progress(p)


def _load(args):
    from deltalearn.recipe import ConfigError, load_recipe

    path = Path(args.recipe) if args.recipe else DEFAULT_RECIPE
    if not path.exists():
        raise ConfigError(f"lab recipe not found: {path}; pass --recipe PATH (the repo ships recipes/lab.yaml)")
    recipe = load_recipe(path, args.overrides)
    if recipe.kind != "lab":
        raise ConfigError(f"{path}: kind must be 'lab' for `deltalearn lab`, got {recipe.kind!r}")
    return recipe


def _print_tables(results: dict) -> None:
    for t in results["tables"]:
        print(f"\n## {t['title']}\n")
        print("| " + " | ".join(t["columns"]) + " |")
        print("|" + "---|" * len(t["columns"]))
        for r in t["rows"]:
            print("| " + " | ".join(str(x) for x in r) + " |")
        if t.get("note"):
            print(f"\n{t['note']}")


def run_cli(args) -> int:
    from deltalearn.lab.experiments import LabSettings, render_lab, run_lab
    from deltalearn.lab.ladder import build_ladder

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    recipe = _load(args)
    progress = not args.no_progress
    t0 = time.time()
    load0 = os.getloadavg()[0]
    if args.ladder_only:
        rec = build_ladder(LabSettings.from_recipe(recipe).ladder, progress=progress)
        for r in rec["rungs"] + [rec["student"]]:
            print(f"{LabSettings.from_recipe(recipe).model(r['name']):16s} {r['run']:>8s} step {r['step']:5d}  "
                  f"dev acc {r['dev_acc']:.1%}")
        how = "cached" if rec.get("cached") else f"trained in {rec['wall_s']:.0f} s"
        print(f"ladder: {how} (load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end)")
        return 0
    out = Path(args.out or f"runs/{recipe.name}{'-sweep' if args.sweep else '-corrupt' if args.corrupt else ''}")
    if args.corrupt and args.render:  # redraw the plot of a finished run from its results.json
        from deltalearn.io import write_json_atomic
        from deltalearn.lab.report import draw_corrupt_plot

        results = draw_corrupt_plot(out, recipe.name)
        write_json_atomic(out / "results.json", results)
        _print_tables(results)
        return 0
    if args.corrupt:
        from deltalearn.lab.corrupt import run_corrupt_lab

        results = run_corrupt_lab(recipe, out, progress=progress)
        _print_tables(results)
        print(f"\n{out}/results.json written; wall {time.time() - t0:.0f} s (load average {load0:.1f} at start, "
              f"{os.getloadavg()[0]:.1f} at end); timings {results['timings_s']}", file=sys.stderr)
        return 0
    if args.render:
        _print_tables(render_lab(recipe, out, sweep=args.sweep))
        return 0
    results = run_lab(recipe, out, sweep=args.sweep, progress=progress)
    _print_tables(results)
    wall = time.time() - t0
    print(f"\n{out}/results.json written; wall {wall:.0f} s (load average {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end); timings {results['timings_s']}", file=sys.stderr)
    return 0
