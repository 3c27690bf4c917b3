"""Plots for `deltalearn theory`; matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from deltalearn.render import _plt
from deltalearn.theory.geometry import SLIDES_D, Targets


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ARM_STYLE = {"preference": ("C0", "preference (chosen > rejected)"), "sft": ("C3", "SFT on chosen"),
             "reversed": ("C1", "reversed (rejected > chosen)"), "tied": ("C7", "tied teachers (equal quality)")}


def plot_arms(arms: dict, t: Targets, d: int, steps: int, path: Path) -> None:
    plt = _plt()
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 4.3))
    x = np.concatenate([[0.0], np.cumsum(arms["lrs"])])
    for a, cos in arms["cos"].items():
        color, name = ARM_STYLE[a]
        m, se = cos.mean(0), cos.std(0) / math.sqrt(cos.shape[0])
        ax.semilogx(x[1:], m[1:], color=color, label=name)
        ax.fill_between(x[1:], (m - se)[1:], (m + se)[1:], color=color, alpha=0.2)
        if a in ("preference", "sft"):
            zoom.plot(np.arange(steps + 1), m[: steps + 1], color=color, label=name)
            zoom.fill_between(np.arange(steps + 1), (m - se)[: steps + 1], (m + se)[: steps + 1], color=color, alpha=0.2)
    ax.axhline(t.alpha0, color="k", lw=0.8, label="student at start")
    ax.axhline(arms["limits"]["sft"], color="C3", lw=0.8, ls=":", label="SFT limit: alpha_c")
    ax.axhline(arms["limits"]["preference"], color="C0", lw=0.8, ls=":", label="preference limit: cos(v, theta*)")
    ax.axvline(x[steps], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="training length: sum of step sizes (log)", ylabel="cos(theta_t, theta*)",
           title=f"All arms, d={d}, {t.label()}")
    ax.legend(fontsize=7)
    zoom.plot(np.arange(steps + 1), arms["ray"][: steps + 1], "k--", lw=1, label="preference: population ray")
    pref = arms["cos"]["preference"].mean(0)[: steps + 1]
    best = int(np.argmax(pref))
    zoom.axhline(pref[0], color="k", lw=0.8)
    zoom.axvline(best, color="C0", ls=":", lw=1)
    zoom.annotate(f"preference sweet spot: step {best}", (best, pref[best]), textcoords="offset points", xytext=(5, -12), fontsize=8)
    zoom.set(xlabel="SGD step (first phase, constant step size)", ylabel="cos(theta_t, theta*)", title="First phase: the sweet spot")
    zoom.legend(fontsize=7)
    _save(plt, fig, path)


def plot_scatter(sc: dict, d: int, path: Path) -> None:
    plt = _plt()
    k, g = sc["kappa"], sc["gain"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.scatter(k, g, s=6, c=np.where(k > 0, "C0", "C3"), alpha=0.6)
    a1.axhline(0, color="k", lw=0.8)
    a1.axvline(0, color="k", lw=0.8)
    a1.set(xlabel="kappa (C1 margin)", ylabel="best-step gain in cos", title=f"Theorem 6.1: SGD gain vs kappa (d={d})")
    pos = k > 0
    a2.loglog(k[pos] ** 2, np.clip(g[pos], 1e-7, None), ".", ms=3, alpha=0.5, label="SGD best step (kappa > 0)")
    a2.loglog(k[pos] ** 2, np.clip(sc["pop_gain"][pos], 1e-7, None), ".", ms=2, color="k", alpha=0.4, label="population optimum")
    xs = np.logspace(np.log10(max(1e-8, (k[pos] ** 2).min())), np.log10((k[pos] ** 2).max()), 10)
    a2.loglog(xs, xs / 2, "C2--", lw=1, label="guide: kappa^2 / 2")
    a2.set(xlabel="kappa^2", ylabel="gain in cos (clipped at 1e-7)", title="gain is Theta(kappa^2)")
    a2.legend(fontsize=8)
    _save(plt, fig, path)


def plot_corollary(curves: dict, exact: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (reading, (t, rows)) in enumerate(curves.items()):
        d = [r["d"] for r in rows]
        ax.semilogx(d, [r["c1"] for r in rows], "o-", color=f"C{i}", label=f"C1 holds, {t.label()}")
        ax.semilogx(d, [r["normal"] for r in rows], ":", color=f"C{i}", lw=1)
        if any("sgd" in r for r in rows):
            ax.semilogx([r["d"] for r in rows if "sgd" in r], [r["sgd"] for r in rows if "sgd" in r], "s--", ms=4,
                        color=f"C{i}", alpha=0.7, label=f"SGD improves ({reading} reading)")
        if exact.get(reading, -1) > 0:
            ax.axvline(exact[reading], color=f"C{i}", lw=0.8, ls="-.")
            ax.text(exact[reading] * 1.05, 0.3 + 0.08 * i, f"C1 90%: d={exact[reading]}", fontsize=8, color=f"C{i}")
    ax.axhline(0.9, color="k", lw=0.8, ls="--")
    ax.axvline(SLIDES_D, color="grey", lw=0.8)
    ax.text(SLIDES_D * 1.05, 0.5, "slides:\nd > 2000", fontsize=8, color="grey")
    ax.set_xlim(right=max(ax.get_xlim()[1], SLIDES_D * 2.5))
    ax.set(xlabel="dimension d", ylabel="fraction of teacher pairs", ylim=(0, 1.02),
           title="Corollary 6.2: teacher pairs that help (dotted: normal approx.)")
    ax.legend(fontsize=7, loc="lower right")
    _save(plt, fig, path)
