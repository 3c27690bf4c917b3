"""The authors' reference runs and how each paper recipe compares with them, value for value.

The facts live in `data/reference_settings.yaml` (read from scottgeng00/delta_learning's configs and OpenRLHF
code, each with its file); this module compares a recipe's arms with them for `deltalearn run RECIPE --dry-run`
and writes docs/reference-settings.md (`python -m deltalearn.reference > docs/reference-settings.md`).
A value that differs from the reference is a *departure*; a paper recipe must declare each with its reason.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from deltalearn.recipe import Arm, Recipe, arm_configs

TABLE = Path(__file__).parent / "data" / "reference_settings.yaml"
COMPARED = ("model", "data", "chosen", "rejected", "loss", "lr", "beta", "adam_betas", "weight_decay", "grad_clip",
            "warmup_ratio", "min_lr_ratio", "epochs", "batch_size", "micro_batch_size", "max_len", "max_pairs",
            "seed", "shuffle", "precision", "gradient_checkpointing", "nll_coef", "truncation", "drop_truncated",
            "filters", "selection")


@functools.lru_cache(maxsize=1)
def table() -> dict:
    return yaml.safe_load(TABLE.read_text(encoding="utf-8"))


def reference_run(run_id: str) -> dict:
    """One reference run with the shared defaults of its kind filled in; an SFT run's column is its `chosen`."""
    t = table()
    run = t["runs"][run_id]
    out = {**t["defaults"][run["kind"]], **run}
    if run["kind"] == "sft":
        out["chosen"] = out.pop("column")
    return out


@dataclass
class Check:
    arm: str
    field: str
    ours: Any
    reference: Any
    reason: Optional[str]  # the declared departure, when the values differ

    @property
    def same(self) -> bool:
        return _same(self.ours, self.reference)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def recipe_arms(recipe: Recipe) -> list[Arm]:
    """The arms a recipe trains: a sweep's expanded pairs, the listed arms, or the single `main` arm."""
    if recipe.kind == "sweep":
        from deltalearn.sweep import expand_sweep

        return expand_sweep(recipe).arms
    return recipe.arms or [Arm(name="main")]


def _sides(recipe: Recipe, pair) -> tuple[Optional[str], Optional[str]]:
    """(chosen, rejected) column or model of an arm, after its control."""
    if pair.rule == "columns":
        c, r = pair.chosen, pair.rejected
    elif pair.rule == "self_vs_weaker":
        c, r = pair.student, pair.weaker
    elif pair.rule == "ladder" and len(recipe.generate.models) == 2 and pair.sizes:
        c, r = sorted(recipe.generate.models, key=lambda m: -pair.sizes.get(m, 0))
    else:
        return None, None
    return (r, c) if pair.control == "reverse" else (c, r)


def our_values(recipe: Recipe, arm: Arm) -> dict:
    pair, train = arm_configs(recipe, arm)
    chosen, rejected = _sides(recipe, pair)
    v = {"model": train.model, "data": recipe.prompts.dataset or recipe.prompts.path, "chosen": chosen,
         "rejected": rejected, **{k: getattr(train, k) for k in COMPARED if hasattr(train, k)}}
    v["adam_betas"] = list(train.adam_betas)
    if recipe.kind in ("pipeline", "sweep"):  # the sections experiment builds its pairs from columns, unfiltered
        v["drop_truncated"] = pair.drop_truncated
        v["filters"] = "identical, empty"
        v["selection"] = "first rows"  # train.max_pairs: the first pairs, in prompt order
    elif recipe.kind == "sections":
        v["selection"] = "seeded train split"
    return v


def compare(recipe: Recipe) -> list[Check]:
    """Every compared value of every arm of a paper recipe; [] for a recipe the table does not name."""
    t = table()
    entry = t["recipes"].get(recipe.name)
    if entry is None:
        return []
    checks = []
    for arm in recipe_arms(recipe):
        run_id = entry["arms"].get(arm.name)
        if run_id is None:
            checks.append(Check(arm.name, "run", arm.name, None, None))
            continue
        ref = reference_run(run_id)
        ours = our_values(recipe, arm)
        declared = {**(entry.get("departures") or {}), **((entry.get("arm_departures") or {}).get(arm.name) or {})}
        for f in COMPARED:
            if f not in ref or (f == "beta" and ref["kind"] == "sft") or (f == "rejected" and ref["kind"] == "sft"):
                continue
            if f not in ours:
                continue
            r = ref[f]
            if f in ("chosen", "rejected"):
                r = t["columns"].get(r, r)
            checks.append(Check(arm.name, f, ours[f], r, declared.get(f)))
    return checks


def problems(recipe: Recipe) -> list[str]:
    """Differences without a declared reason, declared departures that are not differences, unmapped arms."""
    t = table()
    entry = t["recipes"].get(recipe.name) or {}
    checks = compare(recipe)
    out = [f"arm {c.arm}: no reference run is named for it in {TABLE.name}" for c in checks if c.field == "run"]
    checks = [c for c in checks if c.field != "run"]
    out += [f"arm {c.arm}: {c.field} is {c.ours!r}, the reference {c.reference!r}, and no departure is declared"
            for c in checks if not c.same and not c.reason]
    differing = {(c.arm, c.field) for c in checks if not c.same}
    for f in entry.get("departures") or {}:
        if not any(field == f for _, field in differing):
            out.append(f"departure '{f}' is declared but every arm equals the reference")
    for arm, fields in (entry.get("arm_departures") or {}).items():
        out += [f"arm {arm}: departure '{f}' is declared but the arm equals the reference" for f in fields
                if (arm, f) not in differing]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def format_comparison(recipe: Recipe) -> list[str]:
    """Dry-run lines: the reference settings every arm shares, then each arm's reference file, its own values and
    each departure, then the reasons."""
    import textwrap

    t = table()
    entry = t["recipes"].get(recipe.name)
    if entry is None:
        return []
    checks = [c for c in compare(recipe) if c.field != "run"]
    arms = recipe_arms(recipe)
    lines = [f"Reference runs ({t['repository']} @ {t['commit']}; table: docs/reference-settings.md):"]
    # a value equal to the reference in every arm, and the same in every arm, is printed once
    by_field: dict[str, list[Check]] = {}
    for c in checks:
        by_field.setdefault(c.field, []).append(c)
    shared = [f for f, cs in by_field.items()
              if len(cs) == len(arms) and all(c.same for c in cs) and all(_same(c.ours, cs[0].ours) for c in cs)]
    wrap = functools.partial(textwrap.wrap, width=118, subsequent_indent="      ")
    lines += wrap("  every arm, as the reference: " + ", ".join(f"{f} {_fmt(by_field[f][0].ours)}" for f in shared))
    reasons: dict[str, str] = {}
    for arm in arms:
        run_id = entry["arms"].get(arm.name)
        if run_id is None:
            lines.append(f"  arm {arm.name}: NO reference run named for this arm")
            continue
        mine = [c for c in checks if c.arm == arm.name]
        lines.append(f"  arm {arm.name} <- {reference_run(run_id)['file']}")
        own = [c for c in mine if c.same and c.field not in shared]
        if own:
            lines += wrap("    as the reference: " + ", ".join(f"{c.field} {_fmt(c.ours)}" for c in own))
        for c in mine:
            if c.same:
                continue
            if c.reason and c.reason not in reasons.values():
                reasons[f"[{len(reasons) + 1}]"] = c.reason
            tag = next((k for k, v in reasons.items() if v == c.reason), "")
            lines += wrap(f"    departs: {c.field}: ours {_fmt(c.ours)}, reference {_fmt(c.reference)} "
                          + (f"-- reason {tag}" if c.reason else "-- NO REASON DECLARED"))
    if reasons:
        lines.append("  reasons:")
        for k, v in reasons.items():
            lines += wrap(f"    {k} {' '.join(v.split())}")
    return lines


# ---------------------------------------------------------------------------------------------------------
# docs/reference-settings.md
# ---------------------------------------------------------------------------------------------------------


def markdown() -> str:
    t = table()
    base = f"https://github.com/{t['repository']}/blob/{t['commit']}"
    out = ["# The authors' reference runs", "",
           f"Read from [{t['repository']}](https://github.com/{t['repository']}) at commit `{t['commit']}` (an "
           "OpenRLHF fork). Generated from `src/deltalearn/data/reference_settings.yaml` by "
           "`python -m deltalearn.reference > docs/reference-settings.md`; `tests/test_reference_settings.py` checks "
           "every paper recipe against it, and `deltalearn run RECIPE --dry-run` prints the comparison.", "",
           "## Shared settings", "",
           "Sources: `configs/dpo/base.yaml`, `configs/sft/base.yaml`, `openrlhf/cli/train_dpo.py`, "
           "`openrlhf/cli/train_sft.py` (argparse defaults; min lr = 0.1 x lr; warmup ceil(3% of steps)), "
           "`openrlhf/datasets/reward_dataset.py` and `sft_dataset.py` (EOS at the end of every sequence; over "
           "`max_len` cut with the last token forced to EOS = `train.truncation: eos_at_cut`; only prompts of >= "
           "max_len - 2 tokens dropped), `openrlhf/utils/utils.py` (the first `max_samples` rows, unshuffled; the "
           "sampler then shuffles their order with the seed = `train.shuffle: true`, `train.max_pairs`).", "",
           "| setting | DPO | SFT |", "|---|---|---|"]
    keys = list(dict.fromkeys([*t["defaults"]["dpo"], *t["defaults"]["sft"]]))
    out += [f"| {k} | {_fmt(t['defaults']['dpo'].get(k, '-'))} | {_fmt(t['defaults']['sft'].get(k, '-'))} |"
            for k in keys]
    out += ["", "## Runs", "",
            "| run | model | data | chosen (SFT: column) | rejected | lr | beta | rows | epochs | batch | micro | "
            "seed |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rid in t["runs"]:
        r = reference_run(rid)
        out.append(f"| [{rid}]({base}/{r['file']}) | {r['model']} | {r['data']} | {r['chosen']} | "
                   f"{r.get('rejected', '-') if r['kind'] == 'dpo' else '-'} | {_fmt(r['lr'])} | "
                   f"{_fmt(r['beta']) if r['kind'] == 'dpo' else '-'} | {r['max_pairs']} | {r['epochs']} | "
                   f"{r['batch_size']} | {r['micro_batch_size']} | {r['seed']} |")
    out += ["", "## The released datasets", "",
            "Each `scottgeng00/delta_learning_*` dataset holds one column per model (per k for the sections data) "
            "whose value is a whole conversation, `[{\"role\": \"user\", ...}, {\"role\": \"assistant\", "
            "...}]`; OpenRLHF takes every message but the last as the prompt and the last as the response. They "
            "load as they are: `deltalearn pair --generations FILE` (wide tables), prompt columns (`prompts.column: "
            "3_sections`), the sections experiment's `K_sections` columns, and `deltalearn train` with the columns "
            "named. To train a paper recipe's settings on the released responses, as the reference did:", "",
            "```bash",
            "python -c \"import datasets; datasets.load_dataset('scottgeng00/delta_learning_model_ladder')"
            ".save_to_disk('ladder')\"",
            "deltalearn train recipes/tulu3-8b-qwen2.5-3b-over-1.5b.yaml --pairs ladder \\",
            "    --chosen-key qwen-2.5-3b-instruct --rejected-key qwen-2.5-1.5b-instruct --out runs/qwen3b-released",
            "```", "",
            "The released rows carry no truncation flag, so `pair.drop_truncated` cannot act on them; with "
            "`train.truncation: eos_at_cut` (the paper recipes') they are trained as the reference trained them.",
            "", "## Paper recipes", "",
            "Each recipe's arms and the reference run each reproduces; every value not listed as a departure equals "
            "the reference.", ""]
    for name, e in t["recipes"].items():
        out.append(f"### `{e['file']}`")
        out.append("")
        out += [f"- arm `{arm}` <- `{rid}`" for arm, rid in e["arms"].items()]
        deps = [(None, f, why) for f, why in (e.get("departures") or {}).items()]
        deps += [(arm, f, why) for arm, fs in (e.get("arm_departures") or {}).items() for f, why in fs.items()]
        if deps:
            out += ["", "Departures:", ""]
            out += [f"- {'arm `' + arm + '`, ' if arm else ''}`{f}`: {' '.join(why.split())}" for arm, f, why in deps]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
