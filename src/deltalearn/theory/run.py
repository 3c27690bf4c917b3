"""`deltalearn theory`: run the experiments, write results.json (the report contract), PNGs and a Markdown table."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from deltalearn.theory.experiments import (
    QUICK, TheoryConfig, arms_experiment, corollary, crossing, readings_of, scatter_experiment,
)
from deltalearn.theory.geometry import READINGS, SLIDES_D, accuracy_from_cosine, make_targets, smallest_d_c1, sufficient_d
from deltalearn.theory.plots import plot_arms, plot_corollary, plot_scatter
from deltalearn.theory.sgd import best_gain


def _f(x, nd=4):
    return None if x is None else round(float(x), nd)


def _sig(x, digits=3):
    """Significant digits, for gains that span several decades."""
    return None if x is None else float(f"{float(x):.{digits}g}")


def run(cfg: TheoryConfig, out: Path) -> dict:
    """All three experiments; writes arms.png, gain_vs_kappa.png, corollary.png and results.json under out."""
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    t = make_targets(cfg.student, cfg.chosen, cfg.rejected, cfg.reading)
    timings, tables, plots = {}, [], []

    t0 = time.perf_counter()
    arms = arms_experiment(cfg, t, rng)
    timings["arms_s"] = time.perf_counter() - t0
    T, planned = cfg.steps, max(1, cfg.steps // 3)
    rows = []
    for a, cos in arms["cos"].items():
        m = cos.mean(0)
        best = int(np.argmax(m))
        gain, _ = best_gain(cos)
        rows.append([a, _f(m[0]), _f(m[planned]), _f(m[best]), best, _f(m[T]), _f(m[-1]), _f(accuracy_from_cosine(m[0])),
                     _f(accuracy_from_cosine(m[best])), _f(accuracy_from_cosine(m[-1])), _f(np.mean(gain > 0), 3),
                     _sig(np.median(gain))])
    lrs = arms["lrs"]
    tables.append({
        "title": f"Arms: mean over {cfg.arm_draws} draws, d={cfg.dim}, {t.label()}",
        "columns": ["arm", "cos start", f"cos step {planned}", "cos best", "best step", f"cos step {T}", f"cos step {len(lrs)}",
                    "acc start", "acc best", f"acc step {len(lrs)}", "frac draws with a step above start",
                    "median best-step gain"],
        "rows": rows,
        "note": (f"Full d-dimensional SGD, every arm on the same fresh Gaussian batches of B={arms['batch']}. Steps 1-{T}: "
                 f"step size {lrs[0]:.4g}, set so the preference arm's expected sweet spot is step {planned}; steps {T + 1}-"
                 f"{len(lrs)}: growing step sizes, total {cfg.long_factor:g}x longer (towards convergence). Cosines "
                 f"alpha0/alpha_c/alpha_r = {t.alpha0:.4f}/{t.alpha_c:.4f}/{t.alpha_r:.4f}; accuracy = 1 - arccos(cos)/pi. "
                 f"Draws with kappa > 0: {np.mean(arms['kappa'] > 0):.3f}. The preference arm peaks then declines "
                 f"towards cos(v, theta*) = {arms['limits']['preference']:.3f}. Per-draw best-step gains of ~1e-4 "
                 "for reversed/tied are SGD noise (any step above start counts). SFT also gains early in high d (its "
                 "teacher's errors are nearly orthogonal to the student's, so a little of the teacher averages errors "
                 f"away) and makes the student worse only when trained towards convergence (limit alpha_c = {t.alpha_c:.3f})."),
    })
    plot_arms(arms, t, cfg.dim, T, out / "arms.png")
    write_arm_curves(arms, out / "arms_curves.csv")
    plots.append({"title": "cos(theta_t, theta*) vs training length: preference vs SFT vs reversed vs tied", "path": "arms.png"})

    t0 = time.perf_counter()
    sc = scatter_experiment(cfg, rng)
    timings["theorem_s"] = time.perf_counter() - t0
    k, g, pl = sc["kappa"], sc["gain"], sc["planned"]
    pos, neg = k > 0, k < 0
    ok = pos & (g > 0)
    slope = float(np.polyfit(np.log(k[ok] ** 2), np.log(g[ok]), 1)[0]) if ok.sum() > 2 else float("nan")
    frac = lambda mask, x: _f(np.mean(x) if mask.any() else None, 3)  # noqa: E731
    tables.append({
        "title": f"Theorem 6.1 empirically: {cfg.scatter_draws} random draws, d={cfg.dim}",
        "columns": ["draws kappa > 0", "improving (best step)", "improving (step T/3)", "draws kappa < 0",
                    "not improving (best step)", "not improving (step T/3)", "slope log gain vs log kappa^2",
                    "median gain kappa > 0", "median |gain| of kappa < 0 improvers"],
        "rows": [[int(pos.sum()), frac(pos, g[pos] > 0), frac(pos, pl[pos] > 0), int(neg.sum()), frac(neg, g[neg] <= 0),
                  frac(neg, pl[neg] <= 0), _f(slope, 2), _sig(np.median(g[pos]) if pos.any() else None),
                  _sig(np.median(g[neg & (g > 0)]) if (neg & (g > 0)).any() else None)]],
        "note": (f"Accuracies drawn uniformly: student 65-95%, chosen 55-95%, rejected 50%-chosen. Preference SGD (exact "
                 f"span reduction), T={cfg.steps}, batch {sc['sched'].batch}, per-draw step size from the draw's targets only. "
                 "Population theory: kappa <= 0 never improves and kappa > 0 gains Theta(kappa^2) (slope ~1); 'best "
                 "step' picks the best of T noisy iterates, so draws with kappa just below 0 can show tiny spurious gains."),
    })
    plot_scatter(sc, cfg.dim, out / "gain_vs_kappa.png")
    plots.append({"title": "Best-step gain vs kappa and kappa^2 (Theorem 6.1)", "path": "gain_vs_kappa.png"})

    curves, summary, exact_d = {}, [], {}
    t0 = time.perf_counter()
    for reading in readings_of(cfg):
        tr = make_targets(cfg.student, cfg.chosen, cfg.rejected, reading)
        rows = corollary(cfg, tr, rng)
        curves[reading] = (tr, rows)
        grid_c1, _ = crossing(rows, "c1")
        grid_sgd, interp_sgd = crossing(rows, "sgd")
        grid_planned, _ = crossing(rows, "sgd_planned")
        exact_d[reading] = exact = smallest_d_c1(tr, n=50_000 if cfg.pairs < 1000 else 200_000, seed=cfg.seed)
        bounds = sufficient_d(tr)
        summary.append([reading, f"{tr.alpha0:.3f}/{tr.alpha_c:.3f}/{tr.alpha_r:.3f}", exact, grid_c1, grid_sgd,
                        None if interp_sgd is None else int(round(interp_sgd)), grid_planned, bounds["subgaussian"],
                        bounds["union"], SLIDES_D])
        tables.append({
            "title": f"Corollary 6.2: {tr.label()}",
            "columns": ["d", "frac C1 holds", "normal approx", "frac improving (SGD best step)", "frac improving (SGD step T/3)",
                        "frac C1 (SGD pairs)", "SGD pairs", "batch"],
            "rows": [[r["d"], _f(r["c1"], 3), _f(r["normal"], 3), _f(r.get("sgd"), 3), _f(r.get("sgd_planned"), 3),
                      _f(r.get("c1_sgd_pairs"), 3), r.get("sgd_n", 0), r.get("batch")] for r in rows],
            "note": (f"{cfg.pairs} random teacher pairs per d for C1 (explicit d-dimensional vectors); the first {cfg.sgd_pairs} "
                     f"also trained by preference SGD (exact span reduction), T={cfg.steps}, step size puts the expected sweet "
                     f"spot at T/3, batch gives max({cfg.samples_per_dim:g}*d, {cfg.min_samples}) samples up to it."),
        })
    timings["corollary_s"] = time.perf_counter() - t0
    timings["corollary_c1_s"] = sum(r["c1_s"] for _, rows in curves.values() for r in rows)
    timings["corollary_sgd_s"] = sum(r.get("sgd_s", 0.0) for _, rows in curves.values() for r in rows)
    tables.append({
        "title": "Corollary 6.2: smallest d where 90% of teacher pairs help, vs the slides' d > 2000",
        "columns": ["reading", "cosines a0/ac/ar", "C1 exact (bisection)", "C1 on grid", "SGD best step, grid",
                    "SGD best step, interpolated", "SGD step T/3, grid", "sufficient bound (sub-Gaussian)",
                    "sufficient bound (union)", "slides"],
        "rows": summary,
        "note": ("'C1 exact' bisects over integer d with 200k Monte-Carlo pairs from the exact law of the overlaps. 'SGD "
                 "best step' stops each pair at its best iterate (the theorem's suitable T); 'step T/3' stops every pair "
                 "at the step planned from the targets alone, which fails pairs whose own sweet spot is much earlier. The "
                 "measured rate needs far less than d=2000 under either reading: the slides' figure is a sufficient "
                 "condition from a concentration bound on the noise term, not the true rate. Bound-style numbers are in "
                 "the last columns (P(rho > s) <= exp(-(d-1)s^2/2) on the sphere); 2000 lies between the cosine "
                 "reading's, so the slides most plausibly read 80/70/60 as cosines."),
    })
    plot_corollary(curves, exact_d, out / "corollary.png")
    plots.append({"title": "Fraction of teacher pairs that help vs dimension (90% line; slides' d=2000)", "path": "corollary.png"})

    results = {"experiment": "theory", "tables": tables, "plots": plots,
               "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
               "timings_s": {k: round(v, 2) for k, v in timings.items()}}
    from deltalearn.io import write_json_atomic

    write_json_atomic(out / "results.json", results)
    return results


def write_arm_curves(arms: dict, path: Path) -> None:
    """Per step: total step size so far, then mean cos and mean accuracy over draws for every arm."""
    from deltalearn.io import write_text_atomic

    names = list(arms["cos"])
    lines = [",".join(["step", "sum_lr"] + [f"{a}_{q}" for a in names for q in ("cos", "acc")])]
    x = np.concatenate([[0.0], np.cumsum(arms["lrs"])])
    means = {a: arms["cos"][a].mean(0) for a in names}
    for i in range(len(x)):
        vals = [f"{v:.6f}" for a in names for v in (means[a][i], accuracy_from_cosine(means[a][i]))]
        lines.append(",".join([str(i), f"{x[i]:.6g}"] + vals))
    write_text_atomic(path, "\n".join(lines) + "\n")


def markdown(results: dict) -> str:
    parts = []
    for tb in results["tables"]:
        parts.append(f"### {tb['title']}\n")
        parts.append("| " + " | ".join(tb["columns"]) + " |")
        parts.append("|" + "---|" * len(tb["columns"]))
        for r in tb["rows"]:
            parts.append("| " + " | ".join("" if v is None else str(v) for v in r) + " |")
        parts.append(f"\n{tb['note']}\n")
    for p in results["plots"]:
        parts.append(f"![{p['title']}]({p['path']})")
    return "\n".join(parts)


def _dims(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers")


def add_cli_args(p: argparse.ArgumentParser) -> None:
    d = TheoryConfig()
    p.add_argument("--out", default="runs/theory", help="output folder: results.json and PNG plots (default %(default)s)")
    p.add_argument("--student", type=float, default=d.student, help="student's target (default %(default)s)")
    p.add_argument("--chosen", type=float, default=d.chosen, help="chosen teacher's target (default %(default)s)")
    p.add_argument("--rejected", type=float, default=d.rejected, help="rejected teacher's target (default %(default)s)")
    p.add_argument("--as", dest="reading", choices=READINGS, default=d.reading,
                   help="read the targets as accuracies (1 - arccos(cos)/pi) or cosines to theta*, for the arms plot "
                        "(the Corollary table always shows both readings); default %(default)s")
    p.add_argument("--dim", type=int, default=d.dim, help="dimension for the arms plot and the Theorem 6.1 scatter (default %(default)s)")
    p.add_argument("--dims", type=_dims, default=d.dims, help="comma-separated dimensions for the Corollary 6.2 curve "
                   f"(default: {','.join(map(str, d.dims))})")
    p.add_argument("--n-pairs", "--pairs", dest="pairs", type=int, default=d.pairs, help="teacher pairs per d for the C1 fraction (default %(default)s)")
    p.add_argument("--sgd-pairs", type=int, default=d.sgd_pairs, help="pairs per d also trained by SGD; 0 = C1 only (default %(default)s)")
    p.add_argument("--arm-draws", type=int, default=d.arm_draws, help="draws averaged in the arms plot (default %(default)s)")
    p.add_argument("--scatter-draws", type=int, default=d.scatter_draws, help="draws in the Theorem 6.1 scatter (default %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="SGD steps T (default %(default)s)")
    p.add_argument("--batch", type=int, default=None, help="SGD batch size (default: max(samples-per-dim * d, min-samples) samples up to the sweet spot)")
    p.add_argument("--lr", type=float, default=None, help="SGD step size (default: expected sweet spot at T/3)")
    p.add_argument("--long-factor", type=float, default=d.long_factor, help="arms run: total training length as a multiple of the first T steps (default %(default)s)")
    p.add_argument("--samples-per-dim", type=float, default=d.samples_per_dim, help="samples per dimension seen up to the sweet spot (default %(default)s)")
    p.add_argument("--min-samples", type=int, default=d.min_samples, help="floor on samples up to the sweet spot, span-reduced SGD (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every draw")
    p.add_argument("--quick", action="store_true", help="small fast run (a few seconds; used by the tests)")


def run_cli(args: argparse.Namespace) -> int:
    fields = {f for f in TheoryConfig.__dataclass_fields__}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    if args.quick:  # --quick shrinks only what the user left at its default
        defaults = TheoryConfig()
        kw.update({k: v for k, v in QUICK.items() if kw.get(k) == getattr(defaults, k)})
    cfg = TheoryConfig(**kw)
    t0 = time.perf_counter()
    results = run(cfg, Path(args.out))
    print(markdown(results))
    print(f"\nwrote {Path(args.out) / 'results.json'} and {len(results['plots'])} plots in {time.perf_counter() - t0:.1f} s")
    return 0
