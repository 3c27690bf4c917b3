"""Tables and plots of a lab run, computed only from files on disk (generations, pairs, eval/*.json, ladder.json),
in the results.json form the report module renders."""

from __future__ import annotations

import math
from pathlib import Path

from deltalearn.io import read_json, read_jsonl
from deltalearn.lab import task
from deltalearn.stats import hinge_fit, mean_se

PTS = 100.0  # accuracies and gains are reported in percentage points


def _pm(m: float, se: float) -> str:
    return f"{m * PTS:+.2f} ± {se * PTS:.2f}"


def _acc(m: float, se: float) -> str:
    return f"{m * PTS:.1f} ± {se * PTS:.1f}"


def gen_accuracy(path: Path, task_name: str = task.NAME) -> tuple[float, float, int] | None:
    return rows_accuracy(read_jsonl(path), task_name) if path.exists() else None


def rows_accuracy(rows, task_name: str = task.NAME) -> tuple[float, float, int]:
    """Mean grade +/- s.e. of generation rows (a file's, or a pooled rung's responses)."""
    grade = task.get_task(task_name).grade
    m, se = mean_se([grade(r["response"], r["reference"]) for r in rows])
    return m, se, len(rows)


def error_signs(path: Path) -> tuple[float, float] | None:
    """Digit-sum items: of the wrong numeric items in a generation file, the shares below and above the right sum
    (the direction the teachers' errors share)."""
    if not path.exists():
        return None
    low = high = 0
    for r in read_jsonl(path):
        for got, want in zip(r["response"].split(","), r["reference"].split(",")):
            if got.strip().isdigit() and got.strip() != want:
                low += int(got) < int(want)
                high += int(got) > int(want)
    n = low + high
    return (low / n, high / n) if n else None


def item_rights(T, response: str, reference: str) -> list[int]:
    """1/0 per item of one response: the lookups task's items, or the running-sum answer as a single item."""
    if hasattr(T, "items_right"):
        return T.items_right(response, reference)
    return [int(T.grade(response, reference) == 1.0)]


def kappa_analog(pair_rows: list[dict], student: dict[str, dict], T) -> dict:
    """The lab's analog of the theory's kappa (Section 6: the part of chosen-minus-rejected that points at what
    the student gets wrong). Over the items the student's greedy answer gets wrong, on the pair set's prompts:
    `cw` = chosen right and rejected wrong, `wc` = the reverse; kappa = (cw - wc) / items the student got wrong.
    Pairs dropped by the pairing (e.g. identical sides) are absent here too: they carry no gradient."""
    cw = wc = wrong = 0
    for r in pair_rows:
        st = student.get(r["id"])
        if st is None:
            continue
        ref = r["reference"]
        s_ok = item_rights(T, st["response"], ref)
        c_ok = item_rights(T, r["chosen"][-1]["content"], ref)
        r_ok = item_rights(T, r["rejected"][-1]["content"], ref)
        for s_i, c_i, r_i in zip(s_ok, c_ok, r_ok):
            if not s_i:
                wrong += 1
                cw += c_i and not r_i
                wc += r_i and not c_i
    return {"cw": cw, "wc": wc, "student_wrong_items": wrong, "kappa": (cw - wc) / wrong if wrong else 0.0}


def error_overlap(gen: dict[str, dict], student: dict[str, dict], T) -> tuple[float, float] | None:
    """How often a generation set's items are wrong where the student's greedy answer is wrong, and where it is
    right (shared prompts): independent errors give two equal shares; errors where the student's are give the
    first far above the second, and then the delta has little the student lacks to teach."""
    ww = w = rw = r = 0
    for pid, g in gen.items():
        st = student.get(pid)
        if st is None:
            continue
        for s_i, g_i in zip(item_rights(T, st["response"], g["reference"]),
                            item_rights(T, g["response"], g["reference"])):
            if s_i:
                r += 1
                rw += not g_i
            else:
                w += 1
                ww += not g_i
    return (ww / w, rw / r) if w and r else None


def eval_metric(res: dict) -> dict:
    """The one utility metric of a lab eval result (exact_answer or item_accuracy)."""
    return next(v for k, v in res["metrics"].items() if k.startswith("utility/"))


def load_gen(path: str | Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(path)}


def _pearson(x: list[float], y: list[float]) -> float:
    """Pearson r, nan when it is undefined (fewer than 3 points, or a constant side)."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def lab_results(lab, arms, info: dict, gens: dict, *, sweep: bool) -> dict:
    s, d = lab.s, lab.dir
    ladder = lab.ladder
    plots_dir = d / "plots"
    plots_dir.mkdir(exist_ok=True)

    base = eval_metric(read_json(d / "eval" / "base.json"))
    student_self = gen_accuracy(lab.gen_path("student", 0.0, 0), s.task)
    tables, plots = [], []

    # -- ladder ------------------------------------------------------------------------------------------
    params = {c["run"]["name"]: c["params"] for c in ladder["curves"]}
    rows = []
    many_items = hasattr(lab.T, "items_right")
    spath = lab.gen_path("student", 0.0, 0)
    student_gen = load_gen(spath) if many_items and spath.exists() else {}
    pool_rec = {r["name"]: r for r in ladder.get("pool_rungs", [])}
    for r in ladder["rungs"] + [ladder["student"]]:
        temp = 0.0 if r["name"] == "student" else s.teacher_temperature
        members = [r["name"]] if r["name"] == "student" else lab.members(r["name"])
        have = all(lab.gen_path(m, temp, 0).exists() for m in members)
        gen = lab.responses(r["name"]) if have else {}
        g = rows_accuracy(list(gen.values()), s.task) if gen else None
        spec = next(c["run"] for c in ladder["curves"] if c["run"]["name"] == r["run"])
        # a pooled rung: every copy's run, step and dev accuracy, the pooled responses' accuracy
        recs = [r] + [pool_rec[m] for m in members[1:]]
        row = [s.model(r["name"]) + (f" (+{len(members) - 1} seeded copies)" if len(members) > 1 else ""),
               f"{r['run']} (d{spec['hidden']} L{spec['layers']})", params[r["run"]],
               " / ".join(str(x["step"]) for x in recs), " / ".join(f"{x['dev_acc'] * PTS:.1f}" for x in recs),
               _acc(g[0], g[1]) if g else "-"]
        if s.task == "items":
            sign = error_signs(lab.gen_path(r["name"], temp, 0))
            row.append(f"{sign[0] * PTS:.0f} / {sign[1] * PTS:.0f}" if sign else "-")
        if many_items:
            ov = error_overlap(gen, student_gen, lab.T) if (r["name"] != "student" and gen and student_gen) else None
            row.append(f"{ov[0] * PTS:.0f} / {ov[1] * PTS:.0f}" if ov else "-")
        rows.append(row)
    tables.append({"title": "Ladder: rungs chosen by dev accuracy from pretraining checkpoints",
                   "columns": ["model", "run", "params", "step", "dev acc % (greedy, selection)",
                               f"pref-prompt acc % (the training responses: T={s.teacher_temperature:g} samples; "
                               "student greedy)"] + (["wrong items: % too low / too high"] if s.task == "items"
                                                     else [])
                              + (["items wrong, % where the student is wrong / where it is right"] if many_items
                                 else []),
                   "rows": rows,
                   "note": f"Student eval accuracy (greedy, {base['n']} eval prompts): {_acc(base['mean'], base['se'])}. "
                           f"Ladder wall time: {ladder.get('wall_s', 0):.0f} s"
                           f"{' (cached from an earlier run)' if ladder.get('cached') else ''}."})
    plots.append({"title": "Ladder: dev accuracy of each pretraining run, rungs marked",
                  "path": _plot_ladder(ladder, plots_dir / "ladder.png", d)})

    if lab.pair_selection:
        ps = lab.pair_selection
        win = {ps["main"]["arm"], ps["self"]["arm"]}

        def cand(r) -> str:
            if r.get("loss") == "sft":
                return f"SFT on {r['chosen']}"
            return f"{'own' if r['chosen'] == 'student' else r['chosen']} > {r['rejected']}"

        tables.append({"title": f"Pairs chosen on the dev split (lr {ps['lr']:g}, {ps['dev_prompts']} dev prompts; "
                                f"candidates: rungs below the student's {ps['student_dev_acc'] * PTS:.1f}% dev)",
                       "columns": ["candidate", "dev gain vs base (pts, paired)", "fixed/broken", "chosen"],
                       "rows": [[cand(r), _pm(r["dev_gain"], r["se"]), f"{r['fixed']}/{r['broken']}",
                                 "yes" if r["arm"] in win else ""] for r in ps["candidates"]],
                       "note": "Main pair: the largest dev gain among dpo_norm pairs whose chosen rung is weak data "
                               f"(SFT on its samples alone does not raise the student on dev: {', '.join(ps.get('weak_chosen', [])) or '-'}); "
                               "self-over-weaker: the largest among own > rung. The eval split was not used to "
                               "choose them."})
    for sel, who in ((lab.selection, "Every main-recipe arm below" if lab.self_selection else "Every arm below"),
                     (lab.self_selection, "Every self-over-weaker arm")):
        if not sel:
            continue
        tables.append({"title": f"Learning rate chosen on the dev split ({sel['arm']}, {sel['dev_prompts']} dev prompts)",
                       "columns": ["lr", "dev gain vs base (pts, paired)", "fixed/broken", "chosen"],
                       "rows": [[f"{r['lr']:g}", _pm(r["dev_gain"], r["se"]), f"{r['fixed']}/{r['broken']}",
                                 "yes" if r["lr"] == sel["lr"] else ""] for r in sel["grid"]],
                       "note": f"{who} uses the chosen lr; the eval split was not used to choose it."})

    def arm_row(a) -> list:
        i = info[a.name]
        ev = eval_metric(read_json(d / "eval" / f"{a.name}.json"))
        g, se, fixed, broken = lab.gain(a.name)
        st = i["pairs"]
        delta = _pm(st["delta"], st["delta_se"]) if a.loss != "sft" else "-"
        return [a.name, a.loss, a.note, st["pairs"], f"{st['chosen_acc'] * PTS:.1f}", delta,
                _acc(ev["mean"], ev["se"]), _pm(g, se), f"{fixed}/{broken}"]

    cols = ["arm", "loss", "data", "pairs", "chosen acc %", "delta (chosen - rejected acc, pts)", "eval acc %",
            "gain vs base (pts, paired)", "fixed/broken"]
    base_row = ["student (base)", "-", "-", "-", "-", "-", _acc(base["mean"], base["se"]), "0", "-"]
    def settings_at(lr: float) -> str:
        return (f"lr {lr:g}, batch {lab.recipe.train.batch_size}, "
                f"{lab.recipe.train.max_steps or 'one epoch of'} steps, dpo beta 0.1, dpo_norm beta 5, "
                f"{base['n']} eval prompts; s.e. of the paired difference.")

    settings = settings_at(lab.recipe.train.lr)
    if not sweep:
        main = [a for a in arms if a.group in ("main", "plateau")]
        tables.append({"title": f"Main recipe: chosen = {s.main_chosen}, rejected = {s.main_rejected}, student above both",
                       "columns": cols, "rows": [base_row] + [arm_row(a) for a in main],
                       "note": "plateau-sft-gold is the student-plateau check (SFT on correct solutions). " + settings})
        selfs = [a for a in arms if a.group == "self"]
        tables.append({"title": f"Self-over-weaker: chosen = the student's own greedy answer, rejected = {s.self_weaker}",
                       "columns": cols, "rows": [base_row] + [arm_row(a) for a in selfs],
                       "note": settings_at(lab.self_selection["lr"]) if lab.self_selection else settings})
        plots.append({"title": "Main recipe and self-over-weaker: gain over the base student",
                      "path": _plot_bars(lab, [a for a in arms], plots_dir / "main.png", d)})
    else:
        sweep_tables, points = _sweep_tables(lab, arms, info, plots, plots_dir, student_self, base, settings)
        tables += sweep_tables
    out = {"experiment": "lab-sweep" if sweep else "lab", "tables": tables, "plots": plots,
           "timings_s": {k: round(v, 1) for k, v in lab.timings.items()},
           "student_base": base, "ladder_hash": ladder.get("config_hash")}
    if sweep:
        # machine-readable (fractions, not the tables' points): `deltalearn audit --curve` fits gain on delta here
        # the task's own utility: `item_accuracy` pairs graded by `exact_answer` would give the audit a wrong delta
        out["sweep_points"] = {"quality": lab.T.UTILITY, "metric": f"utility/{lab.T.UTILITY}", "points": points}
    return out


def _sweep_tables(lab, arms, info, plots, plots_dir, student_self, base, settings) -> tuple[list[dict], list[dict]]:
    s, d = lab.s, lab.dir
    qual = {}
    for r in lab.ladder["rungs"]:  # a pooled rung's quality is its pooled responses'
        qual[r["name"]] = rows_accuracy(list(lab.responses(r["name"]).values()), s.task)[0]

    student_gen = load_gen(lab.gen_path("student", 0.0, 0))
    stu = student_self[0] if student_self else base["mean"]
    pts = []
    rows = []
    for a in arms:
        if a.group != "sweep":
            continue
        st = info[a.name]["pairs"]
        g, se, fixed, broken = lab.gain(a.name)
        above = qual[a.rejected] >= stu
        k = kappa_analog(read_jsonl(d / "pairs" / f"{a.name}.jsonl"), student_gen, lab.T)
        pts.append({"arm": a.name, "chosen": a.chosen, "rejected": a.rejected, "delta": st["delta"],
                    "gain": g, "se": se, "both_above_student": above, "chosen_acc": qual[a.chosen], **k})
        rows.append([a.note, f"{qual[a.chosen] * PTS:.1f}", f"{qual[a.rejected] * PTS:.1f}",
                     _pm(st["delta"], st["delta_se"]), f"{k['kappa']:+.3f} ({k['cw']}/{k['wc']})",
                     _pm(g, se), f"{fixed}/{broken}", "yes" if above else ""])
    fit = hinge_fit([p["delta"] for p in pts], [p["gain"] for p in pts])
    far = [p for p in pts if p["both_above_student"]]
    below = [p for p in pts if not p["both_above_student"]]
    out = [{"title": "Sweep: every chosen > rejected pair of the ladder (dpo_norm)",
            "columns": ["pair", "chosen acc %", "rejected acc %", "delta (pts)",
                        "kappa analog (cw/wc on student-wrong items)", "gain vs base (pts, paired)",
                        "fixed/broken", "both above student"],
            "rows": rows, "note": f"Student: {stu * PTS:.1f}% on the pref prompts (greedy). " + settings}]
    mg = lambda ps: mean_se([p["gain"] for p in ps]) if ps else (float("nan"), float("nan"))
    m_far, se_far = mg(far)
    m_below, se_below = mg(below)
    kappa_r = _pearson([p["kappa"] for p in pts], [p["gain"] for p in pts])
    out.append({"title": "Sweep summary: gain against delta",
                "columns": ["quantity", "value"],
                "rows": [["pairs", len(pts)],
                         ["linear fit: slope (gain pts per delta pt)", f"{fit['linear_slope']:.3f}"],
                         ["Pearson r (delta, gain)", f"{fit['pearson_r']:.2f}"],
                         ["hinge fit: breakpoint delta (pts)", f"{fit['breakpoint'] * PTS:.1f}"],
                         ["hinge fit: slope below / above breakpoint", f"{fit['slope_below']:.3f} / {fit['slope_above']:.3f}"],
                         ["hinge vs linear SSE (pts^2)", f"{fit['sse'] * PTS ** 2:.2f} vs {fit['linear_sse'] * PTS ** 2:.2f}"],
                         ["mean gain, pairs with both sides above the student (pts)",
                          f"{m_far * PTS:+.2f} ± {se_far * PTS:.2f} (n={len(far)})" if far else
                          "none: no rung pair lies above the student"],
                         ["mean gain, other pairs (pts)", f"{m_below * PTS:+.2f} ± {se_below * PTS:.2f} (n={len(below)})"],
                         ["Pearson r (kappa analog, gain)", f"{kappa_r:.2f}"],
                         ["pairs with gain > 2 s.e. / < -2 s.e.",
                          f"{sum(p['gain'] > 2 * p['se'] for p in pts)} / {sum(p['gain'] < -2 * p['se'] for p in pts)}"]],
                "note": "Hinge: continuous two-piece least-squares line; 'rises then plateaus' = positive slope below "
                        "the breakpoint and a flat one above (paper: plateau from delta ~0.55 on a 1-5 judge scale)."})
    plots.append({"title": "Sweep: gain vs delta", "path": _plot_sweep(pts, fit, plots_dir / "sweep.png", d)})
    plots.append({"title": "Sweep: gain vs the kappa analog", "path": _plot_kappa(pts, kappa_r,
                                                                                plots_dir / "kappa.png", d)})
    # chosen-quality curves: SFT on each rung; DPO with each rung chosen over the weakest rung
    r1 = lab.ladder["rungs"][0]["name"]
    curve_rows, sft_pts, dpo_pts = [], [], []
    for r in lab.ladder["rungs"]:
        name = r["name"]
        sg = lab.gain(f"sft-{name}")
        dg = lab.gain(f"sweep-{name}-over-{r1}") if name != r1 else None
        sft_pts.append((qual[name], sg[0], sg[1]))
        if dg:
            dpo_pts.append((qual[name], dg[0], dg[1]))
        curve_rows.append([name, f"{qual[name] * PTS:.1f}", _pm(sg[0], sg[1]), _pm(dg[0], dg[1]) if dg else "-"])
    out.append({"title": f"Chosen-quality curves: SFT on rung k, and DPO on rung k over {r1}",
                "columns": ["chosen rung", "chosen acc % (pref prompts)", "SFT gain (pts)", f"DPO gain over {r1} (pts)"],
                "rows": curve_rows, "note": f"Student level: {stu * PTS:.1f}% greedy on the same prompts."})
    plots.append({"title": "Chosen-quality curves", "path": _plot_curves(sft_pts, dpo_pts, stu,
                                                                        plots_dir / "chosen_quality.png", d)})
    return out, pts


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------


def _fig():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_ladder(ladder: dict, path: Path, root: Path) -> str:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    # a continued run (init_from) is drawn after its parent's last step
    offset = {}
    for c in ladder["curves"]:
        parent = c["run"].get("init_from")
        offset[c["run"]["name"]] = (offset.get(parent, 0) + next(
            p["curve"][-1]["step"] for p in ladder["curves"] if p["run"]["name"] == parent)) if parent else 0
        o = offset[c["run"]["name"]]
        ax.plot([o + p["step"] for p in c["curve"]], [p["dev_acc"] * PTS for p in c["curve"]], marker=".",
                label=f"{c['run']['name']} (d{c['run']['hidden']} L{c['run']['layers']}, {c['params'] / 1e3:.0f}K)"
                      + (f", from {parent}" if parent else ""))
    for r in ladder["rungs"] + ladder.get("pool_rungs", []) + [ladder["student"]]:
        x = offset.get(r["run"], 0) + r["step"]
        ax.annotate(r["name"], (x, r["dev_acc"] * PTS), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.plot([x], [r["dev_acc"] * PTS], "ko", ms=4)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("dev accuracy (%)")
    return _save(plt, fig, ax, path, root)


def _plot_bars(lab, arms, path: Path, root: Path) -> str:
    plt = _fig()
    names, g, e = [], [], []
    for a in arms:
        m, se, *_ = lab.gain(a.name)
        names.append(a.name)
        g.append(m * PTS)
        e.append(2 * se * PTS)
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.2))
    ax.barh(names, g, xerr=e, color=["tab:green" if v > 0 else "tab:red" for v in g])
    ax.axvline(0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("gain over the base student (accuracy points; bars: ±2 s.e., paired)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(root))


def _plot_sweep(pts: list[dict], fit: dict, path: Path, root: Path) -> str:
    import numpy as np

    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for above, color, label in ((False, "tab:blue", "other pairs"), (True, "tab:red", "both above the student")):
        ps = [p for p in pts if p["both_above_student"] == above]
        if ps:
            ax.errorbar([p["delta"] * PTS for p in ps], [p["gain"] * PTS for p in ps],
                        yerr=[p["se"] * PTS for p in ps], fmt="o", color=color, label=label, capsize=2)
    for p in pts:
        ax.annotate(f"{p['chosen']}>{p['rejected']}", (p["delta"] * PTS, p["gain"] * PTS), fontsize=6,
                    textcoords="offset points", xytext=(3, 3))
    xs = np.linspace(min(p["delta"] for p in pts), max(p["delta"] for p in pts), 100)
    c = fit["breakpoint"]
    ax.plot(xs * PTS, (fit["intercept"] + fit["slope_below"] * np.minimum(xs, c)
                       + fit["slope_above"] * np.maximum(xs - c, 0)) * PTS, "k-", label="hinge fit")
    ax.plot(xs * PTS, (fit["linear_intercept"] + fit["linear_slope"] * xs) * PTS, "k:", label="linear fit")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("delta: chosen minus rejected accuracy on the pairs (points)")
    ax.set_ylabel("gain over base student (points)")
    return _save(plt, fig, ax, path, root)


def _plot_kappa(pts: list[dict], r: float, path: Path, root: Path) -> str:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.errorbar([p["kappa"] for p in pts], [p["gain"] * PTS for p in pts], yerr=[p["se"] * PTS for p in pts],
                fmt="o", capsize=2, label=f"rung pairs (Pearson r = {r:.2f})")
    for p in pts:
        ax.annotate(f"{p['chosen']}>{p['rejected']}", (p["kappa"], p["gain"] * PTS), fontsize=6,
                    textcoords="offset points", xytext=(3, 3))
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("kappa analog: (chosen-right-rejected-wrong minus reverse) per student-wrong item")
    ax.set_ylabel("gain over base student (points)")
    return _save(plt, fig, ax, path, root)


def _plot_curves(sft_pts, dpo_pts, student: float, path: Path, root: Path) -> str:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for pts, label, fmt in ((sft_pts, "SFT on chosen", "s-"), (dpo_pts, "DPO chosen over weakest rung", "o-")):
        if pts:
            ax.errorbar([p[0] * PTS for p in pts], [p[1] * PTS for p in pts], yerr=[p[2] * PTS for p in pts],
                        fmt=fmt, capsize=2, label=label)
    ax.axvline(student * PTS, color="tab:green", ls="--", label="student's level")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("chosen responses' accuracy (%)")
    ax.set_ylabel("gain over base student (points)")
    return _save(plt, fig, ax, path, root)


def plot_corrupt(panels: list[tuple[str, dict]], path: Path) -> Path:
    """`deltalearn lab --corrupt`: one panel per (title, results.json dict). The weak rung over its copies with m
    random wrong items (m = 0 is the strength-0 control), the student-directed m = 8 arm beside m = 8, and the
    rung's natural pair and SFT on the rung as horizontal bands (no m); gains ± 1 s.e., paired against the base."""
    plt = _fig()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, res) in zip(axes[0], panels):
        arms, k = res["arms"], res["choices"]["chosen_rung"]
        ms = sorted(int(a[1:]) for a in arms if a[0] == "m" and a[1:].isdigit())
        xs = (["zero"] if "zero" in arms else []) + [f"m{m}" for m in ms]
        pos = {a: i for i, a in enumerate(xs)}
        pts = [arms[a] for a in xs]
        ax.errorbar(range(len(xs)), [a["gain"] * PTS for a in pts], yerr=[a["se"] * PTS for a in pts], fmt="o-",
                    capsize=3, color="tab:blue", label=f"{k} > {k} with m random wrong items")
        directed = [a for a in arms if a.startswith("student-m")]
        for a in directed:
            x = pos.get(a[len("student-"):], len(xs) - 1) + 0.12
            ax.errorbar([x], [arms[a]["gain"] * PTS], yerr=[arms[a]["se"] * PTS], fmt="D", capsize=3,
                        color="tab:purple", label=f"{k} > {k} with {a[len('student-m'):]} items = the student's "
                                                  "most likely wrong value")
        for a, color, label in ([(n, "tab:orange", f"{k} > {arms[n]['spec']['rejected']} (natural pair)")
                                 for n in arms if n.startswith("natural-")] + [("sft", "tab:red", f"SFT on {k}")]):
            if a in arms:
                g, se = arms[a]["gain"] * PTS, arms[a]["se"] * PTS
                ax.axhline(g, color=color, ls="--", lw=1.2, label=label)
                ax.axhspan(g - se, g + se, color=color, alpha=0.12)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(xs)), ["0\n(identical)" if a == "zero" else a[1:] for a in xs])
        ax.set_xlabel("m: items of the chosen answer corrupted in the rejected copy")
        ax.set_ylabel("gain over the base student (points, ± 1 s.e.)")
        base = res.get("student_base")
        ax.set_title(title + (f" (base {base['mean'] * PTS:.1f}%)" if base else ""), fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_corrupt_plot(run_dir: str | Path, title: str) -> dict:
    """A `lab --corrupt` run folder's results.json -> plots/corrupt.png, listed in the returned results' plots."""
    d = Path(run_dir)
    res = read_json(d / "results.json")
    (d / "plots").mkdir(exist_ok=True)
    path = plot_corrupt([(title, res)], d / "plots" / "corrupt.png")
    res["plots"] = [{"title": "Gain vs the number of corrupted items, with the controls",
                     "path": str(path.relative_to(d))}]
    return res


def _save(plt, fig, ax, path: Path, root: Path) -> str:
    """Legend, grid, save as PNG, close; the path relative to the run folder (for results.json)."""
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(root))


if __name__ == "__main__":  # redraw the corruption figure from saved results: TITLE=RESULTS.json ... OUT.png
    import sys

    *specs, out = sys.argv[1:]
    if not specs or not out.endswith(".png") or not all("=" in s for s in specs):
        sys.exit("usage: python -m deltalearn.lab.report TITLE=RESULTS.json [TITLE=RESULTS.json ...] OUT.png")
    print(plot_corrupt([(t, read_json(f)) for t, _, f in (s.partition("=") for s in specs)], Path(out)))
