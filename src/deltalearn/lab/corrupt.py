"""`deltalearn lab --corrupt`: deltas without a ladder -- a response over its own corrupted copy (issue 32).

The ladder cannot separate the size of a delta from the structure of its errors (digit sums: the rungs' errors
share a direction). A corruption fixes both: `wrong_items@m` replaces exactly m items of a response by a uniformly
random wrong value (the right items first), so the delta is min(m, right items) and its errors are independent of
the student's; `student_wrong_items@m` puts the student's own most likely wrong value there instead.

Every setting is chosen on the dev split, before any eval-split number is looked at:
1. the weak chosen rung k: SFT on each rung below the student, alone; k = the highest rung whose SFT does not
   raise the student on dev (weak data in the paper's sense);
2. the main lr: dpo_norm k > k~wrong_items@M (M = the largest m) at each lr of `corrupt.lr_grid`, best dev gain;
3. the self lr: the same for own > own~wrong_items@M (own = the student's greedy answers).
Eval split, each arm a paired difference against the base student:
- main: k over k with m corrupted items, m in `corrupt.m`; k over its natural pairs (k over each lower rung, the
  nearest `corrupt.natural` of them) beside them; SFT on k; strength 0 (the identity, the zero-delta control);
  towards the student's own errors (student_wrong_items@M) against random (wrong_items@M);
- self: own > own~wrong_items@M, own > own~student_wrong_items@M, SFT on own, and the reversed control.
The student's most likely wrong value per key comes from `corrupt.student_samples` temperature-1 samples of the
student on the pref prompts (written to wrong_values.json; keys it was never wrong on fall back to random).
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deltalearn.io import read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from deltalearn.lab import task
from deltalearn.lab.experiments import ArmSpec, Lab, _cached_choice
from deltalearn.lab.report import PTS, _acc, _pm, draw_corrupt_plot, eval_metric, kappa_analog, load_gen
from deltalearn.recipe import ConfigError, Recipe, from_dict
from deltalearn.stats import mean_se, paired_diff


@dataclass
class CorruptSettings:
    """`experiment.corrupt:` of a lab recipe (every key optional)."""

    m: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Items corrupted per response in the main experiment; the largest is also the self experiment's and the
    student-vs-random contrast's."""
    lr_grid: list[float] = field(default_factory=lambda: [1e-6, 3e-6, 1e-5])
    """Learning rates tried on dev for the main and the self experiment."""
    natural: int = 2
    """Natural pairs beside the corrupted ones: chosen rung k over each of its `natural` nearest lower rungs."""
    student_samples: int = 2
    """Temperature-1 samples of the student per pref prompt, for its most likely wrong value per key."""
    self_lr: str = "dev"
    """The self experiment's lr: `dev` (its own grid on dev) or `main` (the lr chosen on dev for the main
    experiment; saves the grid's dev arms on a loaded machine)."""
    chosen_rung: str = ""
    """A fixed chosen rung instead of the dev choice (empty: chosen on dev; set for tests or a rerun)."""

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "CorruptSettings":
        s = from_dict(cls, dict(recipe.experiment.get("corrupt") or {}), "experiment.corrupt")
        if not s.m or any(m < 1 for m in s.m):
            raise ConfigError(f"experiment.corrupt.m: item counts >= 1, got {s.m} (strength 0 is run as the "
                              "zero-delta control anyway)")
        if s.self_lr not in ("dev", "main"):
            raise ConfigError(f"experiment.corrupt.self_lr: 'dev' or 'main', got {s.self_lr!r}")
        if not s.lr_grid or s.student_samples < 1:
            raise ConfigError("experiment.corrupt: lr_grid needs at least one lr and student_samples >= 1")
        return s


def corrupt_label(source: str, name: str, m: int) -> str:
    from deltalearn.corrupt_pairs import rejected_label

    return rejected_label(source, name, m)


def _parse(rejected: str) -> tuple[str, str, float]:
    src, _, rest = rejected.partition("~")
    name, _, m = rest.rpartition("@")
    return src, name, float(m)


class CorruptLab(Lab):
    """A lab run whose rejected sides may be corrupted copies (`SRC~NAME@M`)."""

    def wrong_values_path(self) -> Path:
        return self.dir / "wrong_values.json"

    def build_pairs(self, arm: ArmSpec) -> tuple[Path, dict]:
        if not arm.rejected or "~" not in arm.rejected:
            return super().build_pairs(arm)
        from deltalearn.pairs import make_pairs
        from deltalearn.recipe import PairConfig

        path, stats = self.cached_pairs(arm)
        if stats is not None:
            return path, stats
        src, name, m = _parse(arm.rejected)
        if src != arm.chosen:
            raise ConfigError(f"arm {arm.name}: the lab corrupts the chosen side's own samples ({arm.chosen})")
        cfg = PairConfig(rule="corrupt", chosen=src, corruption=name, strength=m, seed=self.recipe.seed,
                         control="reverse" if arm.reverse else "none", drop_truncated=self.s.drop_truncated,
                         corruption_args={"wrong_values": str(self.wrong_values_path())})
        rows, summary = make_pairs({src: list(self.responses(src).values())}, cfg)
        grade = self.T.grade
        for r in rows:
            r["chosen_score"] = grade(r["chosen"][-1]["content"], r["reference"])
            r["rejected_score"] = grade(r["rejected"][-1]["content"], r["reference"])
        delta, delta_se = paired_diff([r["rejected_score"] for r in rows], [r["chosen_score"] for r in rows])
        stats = {"pairs": len(rows), "dropped": summary["dropped"], "delta": delta, "delta_se": delta_se,
                 "chosen_acc": mean_se([r["chosen_score"] for r in rows])[0],
                 "rejected_acc": mean_se([r["rejected_score"] for r in rows])[0],
                 "fallback_items": sum((r["corruption_info"] or {}).get("fallback", 0) for r in rows)}
        write_jsonl_atomic(path, rows)
        write_json_atomic(path.with_suffix(".stats.json"), stats)
        return path, stats

    def write_wrong_values(self, samples: int) -> dict:
        """The student's most likely wrong value per key, from its temperature-1 samples on the pref prompts."""
        out = self.wrong_values_path()
        counts: dict[str, Counter] = defaultdict(Counter)
        items = right = 0
        for s in range(samples):
            for g in load_gen(self.gen_path("student", self.s.teacher_temperature, s)).values():
                keys = self.T.parse_prompt(g["prompt"]).keys
                got = [x.strip() for x in g["response"].split(",")]
                for k, want, have in zip(keys, g["reference"].split(","), got):
                    items += 1
                    right += have == want
                    if have != want and have:
                        counts[k][have] += 1
        table = {k: c.most_common(1)[0][0] for k, c in sorted(counts.items())}
        write_json_atomic(out, table)
        return {"keys_with_a_wrong_value": len(table), "sampled_items": items,
                "sampled_item_acc": right / items if items else 0.0,
                "wrong_items": sum(sum(c.values()) for c in counts.values()),
                "share_of_wrong_items_that_are_the_mode": (sum(c.most_common(1)[0][1] for c in counts.values())
                                                          / max(1, sum(sum(c.values()) for c in counts.values())))}


def _dev_gain_rows(lab: CorruptLab, arms: list[ArmSpec], where: Path, extra=None) -> list[dict]:
    rows = []
    for a in arms:
        g, se, fixed, broken = lab.gain(a.name, where=where)
        rows.append({"arm": a.name, "note": a.note, "dev_gain": g, "se": se, "fixed": fixed, "broken": broken,
                     **(extra or {}).get(a.name, {})})
    return rows


def run_corrupt_lab(recipe: Recipe, run_dir: str | Path, *, progress: bool = True) -> dict:
    t0 = time.time()
    cs = CorruptSettings.from_recipe(recipe)
    if not hasattr(task.get_task(str(recipe.experiment.get("task", task.NAME))), "items_right"):
        raise ConfigError("deltalearn lab --corrupt needs an items task (experiment.task: items or lookups): the "
                          "corruptions replace items")
    lab = CorruptLab(recipe, run_dir, progress=progress)
    lab.prepare()
    s = lab.s
    dev_dir = lab.dir / "dev"
    student_dev = lab.ladder["student"]["dev_acc"]
    rungs = [r["name"] for r in lab.ladder["rungs"]]
    if cs.chosen_rung and cs.chosen_rung not in rungs:
        raise ConfigError(f"experiment.corrupt.chosen_rung: {cs.chosen_rung!r} is not a rung ({', '.join(rungs)})")
    below = (rungs[:rungs.index(cs.chosen_rung) + 1] if cs.chosen_rung else
             [r["name"] for r in lab.ladder["rungs"] if r["dev_acc"] < student_dev])
    if not below:
        raise ConfigError(f"no rung below the student's dev accuracy {student_dev:.1%}")
    M = max(cs.m)
    lab.generate([(r, s.teacher_temperature, 0) for r in below] + [("student", 0.0, 0)]
                 + [("student", s.teacher_temperature, i) for i in range(cs.student_samples)],
                 extra=[lab.base_eval_job("eval"), lab.base_eval_job("dev")])
    wrong = lab.write_wrong_values(cs.student_samples)
    lr0 = s.sweep_lr if s.sweep_lr is not None else recipe.train.lr

    # -- dev 1: the weak chosen rung ------------------------------------------------------------------------
    choice_path = dev_dir / "corrupt-choices.json"
    fp = {**lab.dev_fingerprint(), "corrupt": asdict(cs), "lr0": lr0}
    choices = _cached_choice(choice_path, fp) if choice_path.exists() else {"settings": fp}
    if cs.chosen_rung:
        choices.update(chosen_rung=cs.chosen_rung, sft_rows=[], lr0=lr0)
    if "chosen_rung" not in choices:
        sft = [ArmSpec(f"sft-{r}", "dev", r, None, "sft", note=f"SFT on {r}") for r in below]
        lab.run_arms(sft, "lab: corrupt dev SFT", where=dev_dir, eval_prompts="dev", lrs=[lr0] * len(sft))
        rows = _dev_gain_rows(lab, sft, dev_dir)
        weak = [r for r, row in zip(below, rows) if row["dev_gain"] <= 0]
        if not weak:
            raise ConfigError("SFT on every rung below the student raises it on dev: no weak chosen rung ("
                              + ", ".join(f"{r['arm']} {r['dev_gain'] * PTS:+.2f}" for r in rows) + ")")
        choices.update(sft_rows=rows, lr0=lr0, chosen_rung=weak[-1])
        write_json_atomic(choice_path, choices)
    k = choices["chosen_rung"]

    # -- dev 2-3: the lrs ---------------------------------------------------------------------------------------
    for key, chosen in (("lr_main", k), ("lr_self", "student")):
        if key in choices:
            continue
        if key == "lr_self" and cs.self_lr == "main":
            choices.update(lr_self=choices["lr_main"], lr_self_rows=[])
            continue
        who = "own" if chosen == "student" else chosen
        arms = [ArmSpec(f"{key}-{lr:g}", "dev", chosen, corrupt_label(chosen, "wrong_items", M), "dpo_norm",
                        note=f"{who} > {who}~wrong_items@{M}, lr {lr:g}") for lr in cs.lr_grid]
        lab.run_arms(arms, f"lab: corrupt dev {key}", where=dev_dir, eval_prompts="dev", lrs=list(cs.lr_grid))
        rows = _dev_gain_rows(lab, arms, dev_dir)
        for row, lr in zip(rows, cs.lr_grid):
            row["lr"] = lr
        best = max(rows, key=lambda r: (r["dev_gain"], -r["lr"]))
        choices.update({key: best["lr"], f"{key}_rows": rows})
        write_json_atomic(choice_path, choices)

    # -- eval ---------------------------------------------------------------------------------------------------
    lower = below[:below.index(k)][::-1][:cs.natural]
    main = [ArmSpec(f"m{m}", "main", k, corrupt_label(k, "wrong_items", m), "dpo_norm",
                    note=f"{k} > {k} with {m} random wrong item(s)") for m in sorted(cs.m)]
    main += [ArmSpec(f"student-m{M}", "main", k, corrupt_label(k, "student_wrong_items", M), "dpo_norm",
                     note=f"{k} > {k} with {M} items set to the student's most likely wrong value"),
             ArmSpec("zero", "main", k, corrupt_label(k, "wrong_items", 0), "dpo_norm",
                     note=f"{k} > {k} (strength 0: identical sides)")]
    main += [ArmSpec(f"natural-{j}", "main", k, j, "dpo_norm", note=f"{k} > {j} (natural pair)") for j in lower]
    main += [ArmSpec("sft", "main", k, None, "sft", note=f"SFT on {k}")]
    own = [ArmSpec(f"self-m{M}", "self", "student", corrupt_label("student", "wrong_items", M), "dpo_norm",
                   note=f"own > own with {M} random wrong items"),
           ArmSpec(f"self-student-m{M}", "self", "student", corrupt_label("student", "student_wrong_items", M),
                   "dpo_norm", note=f"own > own with {M} items set to the student's most likely wrong value"),
           ArmSpec("self-sft", "self", "student", None, "sft", note="SFT on own answers"),
           ArmSpec(f"self-reversed-m{M}", "self", "student", corrupt_label("student", "wrong_items", M),
                   "dpo_norm", reverse=True, note=f"own with {M} random wrong items > own")]
    # an arm whose corruption could break no response (e.g. m items of a rung that answers fewer) is reported, not run
    empty = [a.name for a in main + own if lab.build_pairs(a)[1]["pairs"] == 0]
    arms = [a for a in main + own if a.name not in empty]
    lrs = [choices["lr_main"] if a.group == "main" else choices["lr_self"] for a in arms]
    info = lab.run_arms(arms, "lab: corrupt eval", lrs=lrs, extra=[lab.base_eval_job("eval")])
    lab.timings["total_s"] = time.time() - t0
    results = corrupt_results(lab, arms, info, choices, wrong, cs, lrs)
    results["arms_without_pairs"] = empty
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json_atomic(lab.dir / "results.json", results)
    results = draw_corrupt_plot(lab.dir, recipe.name)  # plots/corrupt.png, from the results.json just written
    write_json_atomic(lab.dir / "results.json", results)
    return results


def corrupt_results(lab: CorruptLab, arms, info, choices, wrong, cs, lrs) -> dict:
    d = lab.dir
    base = eval_metric(read_json(d / "eval" / "base.json"))
    student_gen = load_gen(lab.gen_path("student", 0.0, 0))
    ladder_acc = {r["name"]: r["dev_acc"] for r in lab.ladder["rungs"]}
    tables = []
    tables.append({"title": f"Dev: SFT on each rung below the student (lr {choices['lr0']:g}, {lab.s.dev_prompts} "
                            "dev prompts): the weak chosen rung",
                   "columns": ["arm", "rung dev acc %", "dev gain (pts, paired)", "fixed/broken", "chosen"],
                   "rows": [[r["arm"], f"{ladder_acc[r['arm'][4:]] * PTS:.1f}", _pm(r["dev_gain"], r["se"]),
                             f"{r['fixed']}/{r['broken']}", "yes" if r["arm"] == f"sft-{choices['chosen_rung']}"
                             else ""] for r in choices["sft_rows"]],
                   "note": "Chosen: the highest rung whose SFT does not raise the student on dev."})
    for key, what in (("lr_main", "main"), ("lr_self", "self")):
        if not choices.get(f"{key}_rows"):  # self_lr: main (the main experiment's dev choice)
            continue
        tables.append({"title": f"Dev: lr of the {what} experiment",
                       "columns": ["arm", "lr", "dev gain (pts, paired)", "fixed/broken", "chosen"],
                       "rows": [[r["note"], f"{r['lr']:g}", _pm(r["dev_gain"], r["se"]), f"{r['fixed']}/{r['broken']}",
                                 "yes" if r["lr"] == choices[key] else ""] for r in choices[f"{key}_rows"]]})
    cols = ["arm", "data", "pairs", "chosen acc %", "rejected acc %", "delta (pts)",
            "kappa analog (cw/wc)", "gain vs base (pts, paired)", "fixed/broken", "lr"]
    machine = {}
    for group, title in (("main", f"Main: weak chosen rung {choices['chosen_rung']} over its corrupted copies"),
                         ("self", "Self: the student's own answers over their corrupted copies")):
        rows = [["student (base)", "-", "-", "-", "-", "-", "-", _acc(base["mean"], base["se"]), "-", "-"]]
        for a, lr in zip(arms, lrs):
            if a.group != group:
                continue
            st = info[a.name]["pairs"]
            g, se, fixed, broken = lab.gain(a.name)
            if a.loss == "sft":
                kap, rej, delta = None, "-", "-"
            else:
                kap = kappa_analog(read_jsonl(d / "pairs" / f"{a.name}.jsonl"), student_gen, lab.T)
                rej = f"{st['rejected_acc'] * PTS:.1f}"
                delta = _pm(st["delta"], st["delta_se"])
            rows.append([a.name, a.note, st["pairs"], f"{st['chosen_acc'] * PTS:.1f}", rej, delta,
                         f"{kap['kappa']:+.3f} ({kap['cw']}/{kap['wc']})" if kap else "-", _pm(g, se),
                         f"{fixed}/{broken}", f"{lr:g}"])
            machine[a.name] = {"spec": asdict(a), "pairs": st, "gain": g, "se": se, "fixed": fixed,
                               "broken": broken, "kappa": kap, "lr": lr}
        tables.append({"title": title, "columns": cols, "rows": rows,
                       "note": f"{base['n']} eval prompts; gains are paired differences against the base student "
                               "(s.e. of the paired difference). Kappa analog: on the items the student's greedy "
                               "answer gets wrong, chosen-right-rejected-wrong minus the reverse, per such item."})
    return {"experiment": "lab-corrupt", "tables": tables, "arms": machine, "choices": choices,
            "wrong_values": wrong, "student_base": base, "timings_s": {k: round(v, 1) for k, v in lab.timings.items()},
            "ladder_hash": lab.ladder.get("config_hash"), "settings": asdict(cs)}
