"""`deltalearn audit PAIRS`: what a pair set will teach, learned in minutes on a CPU before GPU hours are spent.

Five findings, each with the numbers behind it (paper Section 5, "Analysis"; shared/paper-notes.md):
1. Health: identical and near-identical pairs, empty or truncated sides, duplicated prompts, length bias.
2. The delta: per-pair quality difference (a utility or a judge): mean, 95% CI, shares, histogram; and how often
   the pairing rule (e.g. model size) agrees with those quality labels.
3. Weakness: on a sample of the prompts the student answers itself; chosen's and rejected's quality against the
   student's, with flags for "both sides far above the student" (paper: Qwen 72B over 32B/14B hurt) and
   "chosen far below" (paper: Qwen 1.5B over 0.5B gained less than its delta predicts).
4. The student's view: its implicit preference (per-token log-prob of chosen minus rejected, the student being
   its own reference): pairs it already prefers strongly ask it for what it already does.
5. A predicted gain band from a delta -> gain curve: fitted to this project's sweep results (`deltalearn lab
   --sweep` / `deltalearn sweep` results.json), or the paper's cited numbers. Always labelled a prediction.

Each finding is a pure function of its inputs; `audit_pairs` does the I/O (reading, the student's answers and
log-probs, a judge) and `render_markdown` / `audit_tables` turn the result (plain JSON) into text and tables.
A check that cannot run on the given pairs is skipped with one line saying which and why, never guessed.
"""

from __future__ import annotations

import difflib
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

from deltalearn.io import DataError, read_json, read_table, write_json_atomic, write_text_atomic
from deltalearn.recipe import ConfigError
from deltalearn.stats import mean_se, pearson, spearman

NEAR_IDENTICAL = 0.9
"""Word-level similarity (difflib ratio) at or above which two different sides count as near-identical."""
STRONG_MARGIN = 1.0
"""Per-token log-prob margin (nats) above which the student already prefers the chosen side strongly: chosen's
tokens are on average e (2.7) times likelier than rejected's."""

# The paper's numbers, cited (shared/paper-notes.md; "(2nd)" = from a secondary summary of the paper).
PAPER = {
    "source": "paper: Geng et al. 2025, Section 5 (21 Qwen2.5 ladder pairs, responses scored 1-5 by GPT-4o)",
    "knee": 0.55,
    "facts": [
        "gain rises with the delta up to about 0.55 judge points (1-5 scale), then plateaus",
        "Qwen2.5 3B > 1.5B: 11-benchmark average 57.2 -> 63.4 (+6.2) on Tulu-3-8B-SFT (2nd)",
        "Qwen2.5 1.5B > 0.5B: +2.1 although the chosen model is 11.4 points below the student (2nd)",
        "72B over 32B or 14B hurt: both sides far above the student",
        "model-size heuristic agrees with GPT-4o labels 80.5% of the time; both label sets train equally well",
    ],
}


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


def read_pairs(path) -> list[dict]:
    """Pair rows from a saved dataset, .jsonl, .parquet, ... Every row needs prompt, chosen and rejected."""
    from deltalearn.tokenize import as_response_text

    rows = read_table(path)
    if not rows:
        raise DataError(path, "no pairs")
    for i, r in enumerate(rows, start=1):
        for key in ("prompt", "chosen", "rejected"):
            if key not in r:
                raise DataError(path, f"missing field (row has: {', '.join(r)})", row=i, field=key)
        for key in ("chosen", "rejected"):
            try:
                as_response_text(r[key], where=key)
            except DataError as e:
                raise DataError(path, str(e), row=i, field=key) from None
    return rows


def _text(side) -> str:
    from deltalearn.tokenize import as_response_text

    return as_response_text(side)


def _prompt_key(prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def sample_indices(n: int, k: int, seed: int = 0) -> tuple[list[int], Optional[str]]:
    """k row indices drawn without replacement (sorted), and a note when k had to be clamped to n."""
    if k < 1:
        raise ConfigError(f"--sample must be >= 1, got {k}")
    note = None
    if k > n:
        note = f"--sample {k} is larger than the set ({n} pairs): clamped to {n}"
        k = n
    return sorted(random.Random(seed).sample(range(n), k)), note


# ---------------------------------------------------------------------------------------------------------
# 1. Health
# ---------------------------------------------------------------------------------------------------------


def _similarity(a: list[str], b: list[str]) -> float:
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    # quick_ratio is an upper bound of ratio: most pairs are ruled out without the full match
    if sm.real_quick_ratio() < NEAR_IDENTICAL or sm.quick_ratio() < NEAR_IDENTICAL:
        return 0.0
    return sm.ratio()


def health(pairs: list[dict], deltas: Optional[list[Optional[float]]] = None) -> dict:
    """Counts of degenerate pairs and the length bias. `deltas` (per-pair quality difference, None = unscored)
    adds the correlation of the length difference with the quality delta."""
    n = len(pairs)
    chosen = [_text(p["chosen"]) for p in pairs]
    rejected = [_text(p["rejected"]) for p in pairs]
    identical = [i for i in range(n) if chosen[i].strip() == rejected[i].strip()]
    ident = set(identical)
    near = [i for i in range(n) if i not in ident and
            _similarity(chosen[i].split(), rejected[i].split()) >= NEAR_IDENTICAL]
    out: dict = {"pairs": n, "skipped": []}
    out["identical"] = {"count": len(identical), "examples": [pairs[i].get("id") for i in identical[:3]]}
    out["near_identical"] = {"count": len(near), "threshold": NEAR_IDENTICAL,
                             "examples": [pairs[i].get("id") for i in near[:3]]}
    out["empty_chosen"] = sum(not c.strip() for c in chosen)
    out["empty_rejected"] = sum(not r.strip() for r in rejected)
    if any("chosen_truncated" in p for p in pairs):
        out["truncated_chosen"] = sum(bool(p.get("chosen_truncated")) for p in pairs)
        out["truncated_rejected"] = sum(bool(p.get("rejected_truncated")) for p in pairs)
    else:
        out["skipped"].append("truncated sides: the pairs carry no chosen_truncated/rejected_truncated columns "
                              "(provenance of `deltalearn pair`); `deltalearn pair` drops truncated responses "
                              "unless --keep-truncated")
    by_prompt = Counter(_prompt_key(p["prompt"]) for p in pairs)
    dup = {k: c for k, c in by_prompt.items() if c > 1}
    out["duplicated_prompts"] = {"prompts": len(dup), "rows": sum(dup.values()), "distinct_prompts": len(by_prompt)}
    # Length bias, in words. Counting each pair in both orientations (label +1 for chosen-minus-rejected, -1 for
    # the reverse) makes the point-biserial correlation of length difference with the label mean(d)/rms(d).
    d = [len(c.split()) - len(r.split()) for c, r in zip(chosen, rejected)]
    rms = math.sqrt(sum(x * x for x in d) / n) if n else 0.0
    lb = {"chosen_longer": sum(x > 0 for x in d) / n, "equal": sum(x == 0 for x in d) / n,
          "mean_words_chosen": sum(len(c.split()) for c in chosen) / n,
          "mean_words_rejected": sum(len(r.split()) for r in rejected) / n,
          "mean_diff_words": mean_se(d)[0], "r_label": (sum(d) / n) / rms if rms > 0 else 0.0}
    if deltas is not None:
        pts = [(x, q) for x, q in zip(d, deltas) if q is not None]
        r = pearson([a for a, _ in pts], [b for _, b in pts]) if len(pts) > 2 else float("nan")
        lb["r_quality_delta"] = None if math.isnan(r) else r
    out["length_bias"] = lb
    return out


# ---------------------------------------------------------------------------------------------------------
# 2. The delta
# ---------------------------------------------------------------------------------------------------------


def histogram(values: list[float], bins: int = 10) -> list[dict]:
    """Exact counts per value when the values are few integers (e.g. a section count difference), else
    equal-width bins: [{"lo", "hi", "count"}] (lo == hi for an exact value)."""
    if not values:
        return []
    if all(float(v).is_integer() for v in values) and len(set(values)) <= 15:
        c = Counter(values)
        return [{"lo": v, "hi": v, "count": c[v]} for v in sorted(c)]
    lo, hi = min(values), max(values)
    if lo == hi:
        return [{"lo": lo, "hi": hi, "count": len(values)}]
    w = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / w), bins - 1)] += 1
    return [{"lo": lo + i * w, "hi": lo + (i + 1) * w, "count": c} for i, c in enumerate(counts)]


def delta_verdict(stats: dict) -> str:
    """One line naming what the delta is: zero (a tie), negative (reversed), positive, or not distinguishable."""
    q = stats["quality"]
    lo, hi = stats["delta_ci95"]
    if stats["zero"] == 1.0:
        return (f"zero delta: chosen and rejected score the same {q} in every scored pair (a tie); the pairs carry "
                f"no {q} signal, so expect no gain along it (paper: tied 3-vs-3 sections 6.1 vs base 5.9)")
    if hi < 0:
        return (f"negative delta: chosen scores lower {q} than rejected on average (reversed labels?); expect the "
                f"student to move away from {q} (paper: reversed 2>3 sections took the student to 1.1)")
    if lo > 0:
        return f"positive delta: chosen scores higher {q} than rejected on average"
    return f"delta not distinguishable from zero: its 95% CI [{lo:+.3f}, {hi:+.3f}] includes 0"


def delta_finding(pairs: list[dict], quals: list[Optional[tuple[float, float]]], stats: dict) -> dict:
    """The delta statistics (`pairs.delta_stats`) with a histogram, a verdict, and the pairing rule's agreement
    with the quality labels (or the reason it cannot be measured)."""
    deltas = [q[0] - q[1] for q in quals if q is not None]
    out = {"stats": stats, "histogram": histogram(deltas), "skipped": []}
    if not deltas:
        return out
    out["verdict"] = delta_verdict(stats)
    rules = Counter(str(p.get("rule")) for p in pairs if p.get("rule"))
    rule = ", ".join(rules) if rules else "(unknown: no 'rule' column)"
    out["rule"] = rule
    out["label_agreement"] = {"agree": stats["positive"], "tie": stats["zero"], "disagree": stats["negative"]}
    if "size_agreement" not in stats:
        out["skipped"].append("size-heuristic agreement: the pairs have no chosen_size/rejected_size values "
                              "(provenance of `deltalearn pair --rule ladder`, or --sizes)")
    return out


# ---------------------------------------------------------------------------------------------------------
# 3. Weakness
# ---------------------------------------------------------------------------------------------------------


def weakness(triples: list[tuple[float, float, float]], quality: str) -> dict:
    """Chosen, rejected and the student's own answer scored on the same sampled prompts: (c, r, s) per pair.

    Flags (the rule is stated in the output):
    - both far above: the rejected (weaker) side scores above the student, 95% CI of the paired difference
      above 0 (paper: 72B over 32B or 14B hurt, DPO lowering the likelihood of both good answers);
    - chosen far below: the student scores above chosen by more than the delta itself, 95% CI above 0 (paper:
      Qwen 1.5B over 0.5B, chosen 11.4 points below the student, gained less than its delta predicts).
    """
    n = len(triples)
    if n == 0:
        return {"quality": quality, "n": 0}
    c = [t[0] for t in triples]
    r = [t[1] for t in triples]
    s = [t[2] for t in triples]

    def paired(a, b):
        m, se = mean_se([x - y for x, y in zip(a, b)])
        return {"mean": m, "se": se, "ci95": [m - 1.96 * se, m + 1.96 * se]}

    out = {"quality": quality, "n": n, "student_mean": mean_se(s)[0], "chosen_mean": mean_se(c)[0],
           "rejected_mean": mean_se(r)[0], "chosen_minus_student": paired(c, s),
           "rejected_minus_student": paired(r, s), "delta": paired(c, r),
           "share_chosen_below_student": sum(x < y for x, y in zip(c, s)) / n,
           "share_rejected_above_student": sum(x > y for x, y in zip(r, s)) / n,
           "share_both_above_student": sum(x > z and y > z for x, y, z in zip(c, r, s)) / n}
    gap = paired(s, c)
    out["both_far_above"] = out["rejected_minus_student"]["ci95"][0] > 0
    out["chosen_far_below"] = gap["ci95"][0] > 0 and gap["mean"] > max(out["delta"]["mean"], 0.0)
    return out


# ---------------------------------------------------------------------------------------------------------
# 4. The student's view
# ---------------------------------------------------------------------------------------------------------


def student_view(chosen_lp: list[float], rejected_lp: list[float], quality_deltas: Optional[list] = None,
                 *, strong: float = STRONG_MARGIN) -> dict:
    """The student's implicit preference from its per-token mean log-probs of each side (reference = the student,
    so every pair starts at zero reward margin; this is what the student itself already prefers)."""
    keep = [i for i in range(len(chosen_lp)) if not (math.isnan(chosen_lp[i]) or math.isnan(rejected_lp[i]))]
    m = [chosen_lp[i] - rejected_lp[i] for i in keep]
    n = len(m)
    out: dict = {"n": n, "unscorable": len(chosen_lp) - n, "strong_threshold": strong}
    if not n:
        return out
    mean, se = mean_se(m)
    out.update({"margin_mean": mean, "margin_se": se, "margin_ci95": [mean - 1.96 * se, mean + 1.96 * se],
                "prefers_chosen": sum(x > 0 for x in m) / n, "strongly_prefers_chosen": sum(x > strong for x in m) / n,
                "strongly_prefers_rejected": sum(x < -strong for x in m) / n, "histogram": histogram(m)})
    if quality_deltas is not None:
        pts = [(m[j], quality_deltas[i]) for j, i in enumerate(keep) if quality_deltas[i] is not None]
        if len(pts) > 2:
            rho = spearman([a for a, _ in pts], [b for _, b in pts])
            out["spearman_with_quality_delta"] = None if math.isnan(rho) else rho
    return out


# ---------------------------------------------------------------------------------------------------------
# 5. The predicted gain
# ---------------------------------------------------------------------------------------------------------


def sweep_points(results: dict, where: str = "results.json") -> tuple[list[dict], str, str]:
    """(points [{arm, delta, gain}], quality, metric) of a sweep's results.json: the lab's `sweep_points`, or a
    `deltalearn sweep` table with numeric delta and gain columns."""
    if isinstance(results.get("sweep_points"), dict):
        sp = results["sweep_points"]
        return list(sp["points"]), str(sp["quality"]), str(sp["metric"])
    for t in results.get("tables") or []:
        cols = [str(c) for c in t.get("columns", [])]
        if "delta" in cols and "gain" in cols:
            di, gi = cols.index("delta"), cols.index("gain")
            pts = [{"arm": r[0], "delta": float(r[di]), "gain": float(r[gi])} for r in t["rows"]
                   if isinstance(r[di], (int, float)) and isinstance(r[gi], (int, float))]
            return pts, str(results.get("quality") or "?"), str(results.get("metric") or "?")
    raise DataError(where, "no sweep points: expected 'sweep_points' (deltalearn lab --sweep; rerun it with "
                    "--render to add them to an older run) or a table with numeric 'delta' and 'gain' columns "
                    "(deltalearn sweep)")


def fit_curve(points: list[dict], *, quality: str, metric: str, source: str) -> dict:
    """A rise-then-plateau (hinge) fit of gain on delta, with its residual s.d. for the prediction band."""
    from deltalearn.stats import hinge_fit

    if len(points) < 5:
        raise DataError(source, f"a delta -> gain curve needs at least 5 sweep points, got {len(points)}")
    x = [p["delta"] for p in points]
    y = [p["gain"] for p in points]
    fit = hinge_fit(x, y)
    resid_sd = math.sqrt(fit["sse"] / max(len(x) - 4, 1))  # 4 fitted: intercept, 2 slopes, breakpoint
    return {"kind": "fit", "source": source, "quality": quality, "metric": metric, "points": len(x),
            "delta_range": [min(x), max(x)], "fit": fit, "resid_sd": resid_sd,
            "spearman_delta_gain": spearman(x, y)}


def curve_from_results(path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.exists():
        raise DataError(path, "sweep results not found (run `deltalearn lab --sweep` or `deltalearn sweep` first)")
    pts, quality, metric = sweep_points(read_json(path), str(path))
    return fit_curve(pts, quality=quality, metric=metric, source=f"this project's sweep: {path}")


def hinge_value(fit: dict, x: float) -> float:
    c = fit["breakpoint"]
    return fit["intercept"] + fit["slope_below"] * min(x, c) + fit["slope_above"] * max(x - c, 0.0)


def predict_gain(curve: Optional[dict], stats: Optional[dict], weak: Optional[dict] = None) -> dict:
    """The predicted gain band for a pair set's delta. `curve` None means the paper's cited numbers. Labelled a
    prediction in every rendering; the weakness flags qualify it in words, never in the number."""
    out: dict = {"label": "prediction, not a measurement", "caveats": []}
    if not stats or not stats.get("scored"):
        out["skipped"] = "no scored delta to predict from"
        return out
    d, (lo, hi) = stats["delta_mean"], stats["delta_ci95"]
    if weak and weak.get("both_far_above"):
        out["caveats"].append("both sides are far above the student: the paper saw such pairs hurt (72B over 32B/14B)")
    if weak and weak.get("chosen_far_below"):
        out["caveats"].append("chosen is far below the student: the paper saw less gain than the delta predicts "
                              "(1.5B over 0.5B)")
    if curve is None:
        out.update({"source": PAPER["source"], "facts": PAPER["facts"]})
        if stats["quality"] != "judge":
            out["direction_only"] = True
            out["band"] = None
            out["text"] = (f"the paper's curve is in 1-5 judge points; this delta is in {stats['quality']}, so only "
                           f"its direction carries over: " + ("a gain along it is expected" if lo > 0 else
                                                              "no gain expected (zero or negative delta)"))
            return out
        k = PAPER["knee"]
        share = lambda x: max(0.0, min(x / k, 1.0))  # noqa: E731 - fraction of the plateau gain
        out.update({"share_of_plateau": share(d), "band": [share(lo), share(hi)], "units": "share of the plateau gain",
                    "text": f"{share(lo):.0%} to {share(hi):.0%} of the plateau gain (delta {d:.2f}, knee {k})"})
        return out
    out.update({"source": curve["source"], "metric": curve["metric"], "curve_points": curve["points"]})
    if curve["quality"] != stats["quality"]:
        out["band"] = None
        out["skipped"] = (f"the curve's delta is in {curve['quality']}, this audit's in {stats['quality']}: not "
                          f"comparable (audit with --utility {curve['quality']})")
        return out
    f = curve["fit"]
    xs = [lo, hi] + ([f["breakpoint"]] if lo < f["breakpoint"] < hi else [])
    vals = [hinge_value(f, x) for x in xs]
    z = 1.96 * curve["resid_sd"]
    out.update({"gain": hinge_value(f, d), "band": [min(vals) - z, max(vals) + z], "units": curve["metric"]})
    a, b = curve["delta_range"]
    if d < a or d > b:
        out["caveats"].append(f"delta {d:.3f} lies outside the curve's range [{a:.3f}, {b:.3f}]: extrapolated")
    out["text"] = f"{out['gain']:+.4f} (band {out['band'][0]:+.4f} to {out['band'][1]:+.4f}) in {curve['metric']}"
    return out


# ---------------------------------------------------------------------------------------------------------
# The audit: I/O around the pure findings
# ---------------------------------------------------------------------------------------------------------


def _judge(generations: dict[str, list[dict]], judge: str, progress: bool) -> dict:
    from deltalearn.pairs import judge_scores

    return judge_scores(generations, judge, progress=progress)


def audit_pairs(path, *, student: Optional[str] = None, utility: Optional[str] = None, judge: Optional[str] = None,
                sample: int = 200, seed: int = 0, curve: Optional[dict] = None, max_new_tokens: int = 256,
                max_len: int = 1024, batch_size: int = 8, precision: str = "fp32", progress: bool = False) -> dict:
    """Audit a pair set. Utility quality is computed on every pair; a judge (slow) scores the sample only."""
    from deltalearn.pairs import delta_stats, pair_qualities

    if utility and judge:
        raise ConfigError("give --utility or --judge, not both")
    pairs = read_pairs(path)
    n = len(pairs)
    skipped: list[str] = []
    idx, clamp = sample_indices(n, sample, seed)
    sampled = [pairs[i] for i in idx]
    uses_sample = bool(student or judge)  # utility findings run on every pair; only these read the sample
    a: dict = {"pairs_path": str(path), "pairs": n, "student": student, "sample": len(idx) if uses_sample else None,
               "seed": seed, "notes": [clamp] if clamp and uses_sample else []}
    student_rows = None
    model = tok = None
    if student:
        from deltalearn.generate import generate_responses
        from deltalearn.models import load_model

        model, tok = load_model(student)
        model.eval()
        prompts, seen = [], {}
        for p in sampled:
            k = _prompt_key(p["prompt"])
            if k not in seen:
                seen[k] = f"audit-{len(seen)}"
                prompts.append({"id": seen[k], "prompt": p["prompt"]})
        outs = generate_responses(model, prompts, tokenizer=tok, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, precision=precision, progress=progress)
        by_id = {o["id"]: o for o in outs}
        student_rows = [by_id[seen[_prompt_key(p["prompt"])]] for p in sampled]
        a["student_truncated"] = sum(bool(r.get("truncated")) for r in student_rows)

    # Quality: utility on all pairs; judge on the sample (its own pair ids); else the pairs' stored scores.
    scores = None
    if judge:
        gens = {side: [{"id": str(i), "prompt": p["prompt"], "response": _text(p[side])} for i, p in zip(idx, sampled)]
                for side in ("chosen", "rejected")}
        if student_rows:
            gens["student"] = [{"id": str(i), "prompt": p["prompt"], "response": s["response"]}
                               for i, p, s in zip(idx, sampled, student_rows)]
        scores = _judge(gens, judge, progress)
        scored_pairs = [{**p, "prompt_id": str(i), "chosen_model": "chosen", "rejected_model": "rejected"}
                        for i, p in zip(idx, sampled)]
        a["quality_scope"] = f"judge {judge} on the {len(idx)} sampled pairs"
    else:
        scored_pairs = pairs
        a["quality_scope"] = (f"utility {utility} on all {n} pairs" if utility else
                              f"the pairs' own chosen_score/rejected_score on all {n} pairs")
    name, quals = pair_qualities(scored_pairs, utility=utility, scores=scores, source=str(path))
    if judge:
        name = "judge"
    stats = delta_stats(scored_pairs, utility=utility, scores=scores)
    stats["quality"] = name
    has_quality = stats.get("scored", 0) > 0
    deltas = [None if q is None else q[0] - q[1] for q in quals]

    from deltalearn.corrupt_pairs import corruption_finding

    a["corruption"] = corruption_finding(pairs)  # rule corrupt: its own delta, from the provenance
    a["health"] = health(pairs, deltas if not judge and has_quality else None)
    skipped += a["health"]["skipped"]
    if has_quality:
        a["delta"] = delta_finding(scored_pairs, quals, stats)
        skipped += a["delta"]["skipped"]
    else:
        a["delta"] = {"stats": stats}
        skipped.append("the delta: no quality measure; give --utility NAME or --judge MODEL (the pairs carry no "
                       "chosen_score/rejected_score)")

    if student_rows is None:
        skipped.append("weakness: needs --student MODEL (the model you will tune) to answer the sampled prompts")
        skipped.append("the student's view: needs --student MODEL to score the pairs' log-probs")
    else:
        if not has_quality:
            skipped.append("weakness: no quality measure to score the student's answers with (--utility / --judge)")
        else:
            trip = []
            for j, (i, p, srow) in enumerate(zip(idx, sampled, student_rows)):
                q = quals[j] if judge else quals[i]
                if judge:
                    sq = scores.get(("student", str(i)))
                else:
                    from deltalearn.utility import get_utility

                    sq = get_utility(utility)(srow["response"], p.get("reference")) if utility else None
                if q is not None and sq is not None:
                    trip.append((q[0], q[1], float(sq)))
            if utility is None and judge is None:
                skipped.append("weakness: the pairs' stored scores cannot score the student's answers; give "
                               "--utility NAME or --judge MODEL")
            else:
                a["weakness"] = weakness(trip, name)
        from deltalearn.logps import pair_logps

        c_lp, r_lp = pair_logps(model, tok, sampled, max_len=max_len, reduction="mean", batch_size=batch_size,
                                precision=precision, source=str(path))
        sample_deltas = [quals[j] if judge else quals[i] for j, i in enumerate(idx)]
        a["student_view"] = student_view(c_lp.tolist(), r_lp.tolist(),
                                         [None if q is None else q[0] - q[1] for q in sample_deltas])
        from deltalearn.generate import free_model

        free_model(model)
    a["prediction"] = predict_gain(curve, stats if has_quality else None, a.get("weakness"))
    a["skipped"] = skipped
    return a


# ---------------------------------------------------------------------------------------------------------
# Rendering: Markdown for stdout, tables for the HTML report
# ---------------------------------------------------------------------------------------------------------


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: Optional[float], d: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{d}f}"


def _hist_rows(hist: list[dict], total: int) -> list[list]:
    rows = []
    for b in hist:
        label = (f"{b['lo']:+g}" if b["lo"] else "0") if b["lo"] == b["hi"] else f"[{b['lo']:+.3g}, {b['hi']:+.3g})"
        rows.append([label, b["count"], _pct(b["count"] / total if total else None)])
    return rows


def audit_tables(a: dict) -> list[dict]:
    """The audit as report tables ({title, columns, rows, note}), one or more per finding."""
    out = []
    h = a["health"]
    n = h["pairs"]
    rows = [["identical (chosen = rejected)", h["identical"]["count"], _pct(h["identical"]["count"] / n)],
            [f"near-identical (word similarity >= {h['near_identical']['threshold']:g})",
             h["near_identical"]["count"], _pct(h["near_identical"]["count"] / n)],
            ["empty chosen", h["empty_chosen"], _pct(h["empty_chosen"] / n)],
            ["empty rejected", h["empty_rejected"], _pct(h["empty_rejected"] / n)]]
    if "truncated_chosen" in h:
        rows += [["truncated chosen", h["truncated_chosen"], _pct(h["truncated_chosen"] / n)],
                 ["truncated rejected", h["truncated_rejected"], _pct(h["truncated_rejected"] / n)]]
    dp = h["duplicated_prompts"]
    rows.append([f"prompts in more than one pair (of {dp['distinct_prompts']} distinct)", dp["prompts"],
                 f"{dp['rows']} rows"])
    lb = h["length_bias"]
    rows += [["chosen longer (words)", "", _pct(lb["chosen_longer"])],
             ["mean length, chosen / rejected (words)",
              f"{lb['mean_words_chosen']:.1f} / {lb['mean_words_rejected']:.1f}", ""],
             ["correlation of length difference with the label", _num(lb["r_label"], 2), ""]]
    if lb.get("r_quality_delta") is not None:
        rows.append(["correlation of length difference with the quality delta", _num(lb["r_quality_delta"], 2), ""])
    out.append({"title": f"Audit 1. Health ({n} pairs)", "columns": ["check", "pairs", "share"], "rows": rows,
                "note": "Label correlation: each pair counted both ways (chosen-minus-rejected = +1, reverse = -1), "
                        "so r = mean(d)/rms(d) of the word-length difference d; 0 = no length bias."})
    d = a["delta"]
    s = d["stats"]
    if s.get("scored"):
        lo, hi = s["delta_ci95"]
        rows = [["quality", a.get("quality_scope", s["quality"])],
                ["pairs scored", f"{s['scored']} ({s['unscored']} unscored)"],
                ["chosen mean", f"{s['chosen_mean']:.3f}"], ["rejected mean", f"{s['rejected_mean']:.3f}"],
                ["delta mean, 95% CI", f"{s['delta_mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"],
                ["delta > 0 / = 0 / < 0", f"{_pct(s['positive'])} / {_pct(s['zero'])} / {_pct(s['negative'])}"],
                [f"{s['quality']} labels agree with the pairing rule ({d.get('rule', '?')})", _pct(s["positive"])]]
        if "size_agreement" in s:
            rows.append([f"size heuristic agrees with {s['quality']} ({s['size_pairs']} pairs of different size)",
                         f"{_pct(s['size_agreement'])} (ties {_pct(s['size_ties'])}; paper: 80.5% vs GPT-4o)"])
        rows.append(["verdict", d["verdict"]])
        out.append({"title": f"Audit 2. The delta ({s['quality']})", "columns": ["quantity", "value"], "rows": rows})
        out.append({"title": "Audit 2. Per-pair delta histogram", "columns": ["delta", "pairs", "share"],
                    "rows": _hist_rows(d["histogram"], s["scored"])})
    if a.get("corruption"):
        from deltalearn.corrupt_pairs import corruption_table

        out.append(corruption_table(a["corruption"]))
    w = a.get("weakness")
    if w and w.get("n"):
        def pm(x):
            return f"{x['mean']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"
        rows = [["student (its own greedy answer)", f"{w['student_mean']:.3f}", "-", "-"],
                ["chosen", f"{w['chosen_mean']:.3f}", pm(w["chosen_minus_student"]),
                 f"below the student in {_pct(w['share_chosen_below_student'])}"],
                ["rejected", f"{w['rejected_mean']:.3f}", pm(w["rejected_minus_student"]),
                 f"above the student in {_pct(w['share_rejected_above_student'])}"]]
        flags = []
        if w["both_far_above"]:
            flags.append("BOTH SIDES FAR ABOVE THE STUDENT (paper: 72B over 32B/14B hurt)")
        if w["chosen_far_below"]:
            flags.append("CHOSEN FAR BELOW THE STUDENT (paper: 1.5B over 0.5B gained less than its delta predicts)")
        out.append({"title": f"Audit 3. Weakness: {w['quality']} on {w['n']} sampled prompts, against {a['student']}",
                    "columns": ["side", f"mean {w['quality']}", "minus student (paired, 95% CI)", "per pair"],
                    "rows": rows,
                    "note": ("Flags: " + "; ".join(flags) if flags else "No weakness flag.") +
                            " Rules: both far above = rejected minus student has a 95% CI above 0; chosen far below"
                            " = student minus chosen has a 95% CI above 0 and exceeds the delta."})
    v = a.get("student_view")
    if v and v.get("n"):
        lo, hi = v["margin_ci95"]
        rows = [["pairs scored (sample)", f"{v['n']} ({v['unscorable']} too long to score)"],
                ["mean per-token log-prob margin, chosen - rejected (nats), 95% CI",
                 f"{v['margin_mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"],
                ["student already prefers chosen", _pct(v["prefers_chosen"])],
                [f"prefers chosen strongly (margin > {v['strong_threshold']:g})", _pct(v["strongly_prefers_chosen"])],
                [f"prefers rejected strongly (margin < -{v['strong_threshold']:g})",
                 _pct(v["strongly_prefers_rejected"])]]
        if v.get("spearman_with_quality_delta") is not None:
            rows.append(["rank correlation of the margin with the quality delta",
                         _num(v["spearman_with_quality_delta"], 2)])
        out.append({"title": f"Audit 4. The student's view ({a['student']} as its own reference)",
                    "columns": ["quantity", "value"], "rows": rows,
                    "note": "Pairs the student already prefers strongly ask it for what it already does: they carry "
                            "little new signal."})
    p = a["prediction"]
    rows = [["label", "PREDICTION, not a measurement"], ["source", p.get("source", "-")]]
    if p.get("text"):
        rows.append(["predicted gain", p["text"]])
    if p.get("skipped"):
        rows.append(["not predicted", p["skipped"]])
    for c in p.get("caveats", []):
        rows.append(["caveat", c])
    for f in p.get("facts", []):
        rows.append(["paper", f])
    out.append({"title": "Audit 5. Predicted gain band", "columns": ["item", "value"], "rows": rows})
    if a.get("skipped") or a.get("notes"):
        out.append({"title": "Audit: checks skipped", "columns": ["check skipped, and why"],
                    "rows": [[x] for x in a.get("notes", []) + a.get("skipped", [])]})
    return _renumber(out)


def _renumber(tables: list[dict]) -> list[dict]:
    """Sections numbered 1, 2, 3, ... in the order shown (a finding that was not run leaves no gap)."""
    import re

    numbers: dict[str, int] = {}
    for t in tables:
        m = re.match(r"Audit (\d+)\. ", t["title"])
        if m:
            k = numbers.setdefault(m.group(1), len(numbers) + 1)
            t["title"] = f"Audit {k}. " + t["title"][m.end():]
    return tables


def glance_lines(a: dict) -> list[str]:
    """The verdict, the next step and the warnings, as Markdown lines: what to read first."""
    from deltalearn.glance import audit_glance

    g = audit_glance(a)
    lines = [f"**Verdict: {g['verdict']}.**", "", f"Next step: {g['next_step']}.", ""]
    if g["warnings"]:
        lines += ["Warnings:", *[f"- WARNING: {w}" for w in g["warnings"]], ""]
    return lines


def render_markdown(a: dict) -> str:
    """The audit as Markdown (stdout of `deltalearn audit`): a header line, then each finding's table."""
    from deltalearn.render import _md_table

    head = [f"# Audit of {a['pairs_path']} ({a['pairs']} pairs)", "",
            f"Quality: {a.get('quality_scope')}. Student: {a.get('student') or '(none given)'}"
            + (f", {a['sample']} sampled pairs (seed {a['seed']})" if a.get("student") else "") + ".", ""]
    head += glance_lines(a)
    body = []
    for t in audit_tables(a):
        body += [_md_table(t), ""]
        if t.get("note"):
            body += [t["note"], ""]
    return "\n".join(head + body).rstrip() + "\n"


def histogram_png(a: dict) -> Optional[bytes]:
    """The per-pair delta histogram (and the student's margin histogram when there is one) as one PNG."""
    from deltalearn.render import _plt, _png

    panels = []
    d = a.get("delta", {})
    if d.get("histogram"):
        panels.append((d["histogram"], f"delta in {d['stats']['quality']}"))
    v = a.get("student_view") or {}
    if v.get("histogram"):
        panels.append((v["histogram"], "student's per-token log-prob margin (nats)"))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.2))
    axes = axes if len(panels) > 1 else [axes]
    for ax, (hist, label) in zip(axes, panels):
        xs = [(b["lo"] + b["hi"]) / 2 for b in hist]
        widths = [max(b["hi"] - b["lo"], 0.0) or 0.8 for b in hist]
        ax.bar(xs, [b["count"] for b in hist], width=widths, edgecolor="black", align="center")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("pairs")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def default_out(pairs_path) -> Path:
    """RUN/audit/<pairs name>.json for pairs at RUN/<name> (the report renders RUN/audit/*.json)."""
    p = Path(pairs_path)
    return p.parent / "audit" / f"{p.stem if p.is_file() else p.name}.json"


# ---------------------------------------------------------------------------------------------------------
# CLI: deltalearn audit
# ---------------------------------------------------------------------------------------------------------


def add_cli_args(p) -> None:
    p.add_argument("pairs", metavar="PAIRS", help="a pair set: `deltalearn pair --out` folder, .jsonl, .parquet, ...")
    p.add_argument("--student", help="the model you will tune: answers the sampled prompts and scores the pairs")
    p.add_argument("--utility", help="quality by a utility (bold_sections, exact_answer, ...), on every pair")
    p.add_argument("--judge", help="quality by an LLM judge (1-5 rubric), on the sampled pairs only")
    p.add_argument("--sample", type=int, default=200, help="pairs sampled for the student and the judge")
    p.add_argument("--seed", type=int, default=0, help="seed of the --sample draw")
    p.add_argument("--curve", help="a sweep's results.json (or run folder) to fit the delta -> gain curve from; "
                   "default: the paper's cited numbers")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer of the student")
    p.add_argument("--max-len", type=int, default=1024, help="tokens per scored sequence")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass of the student")
    p.add_argument("--out", help="audit JSON to write (default: RUN/audit/<pairs name>.json beside the pairs); "
                   "the Markdown goes to stdout and beside it as .md")
    from deltalearn.cliargs import add_no_progress

    add_no_progress(p)


def run_cli(args) -> int:
    if args.utility and args.judge:
        raise ConfigError("give --utility or --judge, not both")
    if args.utility:
        from deltalearn.utility import get_utility

        get_utility(args.utility)  # an unknown name fails before any model loads
    curve = curve_from_results(args.curve) if args.curve else None
    from deltalearn.outputs import claim_file, is_audit_json, is_audit_md

    out = Path(args.out) if args.out else default_out(args.pairs)
    if out.suffix == ".md":
        raise ConfigError(f"--out {out}: name the audit's JSON file (its Markdown goes beside it as .md)")
    claim_file(out, "audit", is_audit_json)  # before the (possibly long) audit, not after it
    claim_file(out.with_suffix(".md"), "audit", is_audit_md)
    a = audit_pairs(args.pairs, student=args.student, utility=args.utility, judge=args.judge, sample=args.sample,
                    seed=args.seed, curve=curve, max_new_tokens=args.max_new_tokens, max_len=args.max_len,
                    batch_size=args.batch_size, progress=not args.no_progress)
    md = render_markdown(a)
    write_json_atomic(out, a)
    write_text_atomic(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------------
# Validation on a finished lab sweep: does the audit, run before training, rank the arms as training did?
# ---------------------------------------------------------------------------------------------------------


def validate_on_sweep(run_dir, *, student: str = "lab:student", sample: int = 200, max_new_tokens: int = 64,
                      progress: bool = False) -> dict:
    """Audit every sweep arm's pairs (`deltalearn lab --sweep` run folder), then compare with the measured gains.

    Each arm's prediction comes from a curve fitted to the *other* arms only (leave-one-out), so no arm predicts
    itself. Returns per-arm rows and the rank correlations (Spearman) of measured gain with the prediction, the
    delta, the student's margin and chosen-minus-student, and how many measured gains fall inside their band."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    points, quality, metric = sweep_points(results, str(run_dir / "results.json"))
    rows = []
    for p in points:
        a = audit_pairs(run_dir / "pairs" / f"{p['arm']}.jsonl", student=student, utility=quality, sample=sample,
                        max_new_tokens=max_new_tokens, max_len=256, batch_size=64, progress=progress)
        others = [q for q in points if q["arm"] != p["arm"]]
        curve = fit_curve(others, quality=quality, metric=metric, source=f"{run_dir} without {p['arm']}")
        pred = predict_gain(curve, a["delta"]["stats"], a.get("weakness"))
        w, v = a.get("weakness") or {}, a.get("student_view") or {}
        rows.append({"arm": p["arm"], "delta_lab": p["delta"], "delta_audit": a["delta"]["stats"]["delta_mean"],
                     "gain": p["gain"], "predicted": pred.get("gain"), "band": pred.get("band"),
                     "margin": v.get("margin_mean"), "prefers_chosen": v.get("prefers_chosen"),
                     "chosen_minus_student": (w.get("chosen_minus_student") or {}).get("mean"),
                     "both_far_above": w.get("both_far_above"), "chosen_far_below": w.get("chosen_far_below"),
                     "health_near_identical": a["health"]["near_identical"]["count"],
                     "length_r_label": a["health"]["length_bias"]["r_label"]})
    g = [r["gain"] for r in rows]

    def rho(key):
        pts = [(r[key], r["gain"]) for r in rows if r[key] is not None]
        return spearman([x for x, _ in pts], [y for _, y in pts]) if len(pts) > 2 else None

    inside = sum(r["band"][0] <= r["gain"] <= r["band"][1] for r in rows if r["band"])
    return {"run": str(run_dir), "arms": len(rows), "quality": quality, "metric": metric, "rows": rows,
            "spearman": {k: rho(k) for k in ("predicted", "delta_audit", "margin", "chosen_minus_student",
                                               "length_r_label")},
            "inside_band": inside, "mean_gain": mean_se(g)}
