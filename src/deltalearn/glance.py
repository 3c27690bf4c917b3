"""What an audit or a run means, at a glance: a verdict line and the next step first, warning signs as warnings,
human labels for the stored keys, percentages for shares, and a few sample answers per arm.

Pure functions over the JSON that `deltalearn audit` / `pair` / `eval` write; audit.py and report.py render them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Warning thresholds (shares of pairs, or a correlation) past which a pair set is likely to teach the wrong thing.
TRUNCATED_SHARE = 0.5
LENGTH_R = 0.3
DEGENERATE_SHARE = 0.05

# Stored key -> label a person reads. Shares (0..1) are shown as percentages.
LABELS = {
    "quality": "quality measure", "pairs": "pairs", "scored": "pairs scored", "unscored": "pairs not scored",
    "chosen_mean": "chosen mean", "rejected_mean": "rejected mean", "delta_mean": "delta (chosen - rejected) mean",
    "delta_se": "delta standard error", "delta_ci95": "delta 95% interval", "positive": "pairs with chosen better",
    "zero": "pairs tied", "negative": "pairs with rejected better", "size_pairs": "pairs of different model size",
    "size_agreement": "bigger model scores higher", "size_ties": "bigger and smaller score the same",
    "size_agreement_excl_ties": "bigger model scores higher (ties left out)",
    "rule": "pairing rule", "control": "control", "generation_sets": "generation sets", "prompts": "prompts",
    "dropped.missing": "dropped: a response missing", "dropped.empty": "dropped: an empty response",
    "dropped.truncated": "dropped: a response cut at the token limit", "dropped.unscored": "dropped: not scored",
    "dropped.no_tie": "dropped: no equally good partner (tie control)", "dropped.below_margin":
    "dropped: score margin too small", "dropped.identical": "dropped: chosen = rejected",
}
SHARES = {"positive", "zero", "negative", "size_agreement", "size_ties", "size_agreement_excl_ties"}


def label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    head, _, tail = key.rpartition(".")
    return (LABELS.get(head, head.replace("_", " ")) + ": " if head else "") + tail.replace("_", " ")


def value(key: str, v: Any) -> Any:
    """Shares as percentages, floats to 3 significant digits, lists of numbers as a range."""
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(v, float) and leaf in SHARES:
        return f"{v:.1%}"
    if isinstance(v, float):
        return float(f"{v:.3g}")
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"{v[0]:+.3g} to {v[1]:+.3g}"
    return v


def human_rows(flat: dict[str, Any]) -> list[list]:
    return [[label(k), value(k, v)] for k, v in flat.items()]


def audit_glance(a: dict) -> dict:
    """{"verdict", "next_step", "warnings"} for one `deltalearn audit` result."""
    h = a["health"]
    n = max(h["pairs"], 1)
    warnings = []
    for side in ("chosen", "rejected"):
        t = h.get(f"truncated_{side}")
        if t and t / n >= TRUNCATED_SHARE:
            warnings.append(f"{t / n:.0%} of {side} responses were cut at the token limit: the pairs compare "
                            "unfinished answers (generate with a larger max_new_tokens)")
    if h["identical"]["count"] / n >= DEGENERATE_SHARE:
        warnings.append(f"{h['identical']['count'] / n:.0%} of pairs have identical sides: they teach nothing")
    if h["near_identical"]["count"] / n >= DEGENERATE_SHARE:
        warnings.append(f"{h['near_identical']['count'] / n:.0%} of pairs have nearly identical sides (a few words "
                        "differ): check that those words are the difference you mean to teach")
    empty = h["empty_chosen"] + h["empty_rejected"]
    if empty:
        warnings.append(f"{empty} pairs have an empty side")
    r = h["length_bias"]["r_label"]
    if abs(r) >= LENGTH_R:
        longer = "shorter" if r < 0 else "longer"
        warnings.append(f"length bias: the chosen side is usually {longer} (correlation of length difference with "
                        f"the label {r:+.2f}); the model may learn to write {longer} answers rather than better ones")
    d = a.get("delta") or {}
    s = d.get("stats") or {}
    scored = bool(s.get("scored"))
    if scored:
        lo, hi = s["delta_ci95"]
        if s["zero"] == 1.0:
            warnings.append(f"zero delta: chosen and rejected score the same {s['quality']} in every pair")
        elif hi < 0:
            warnings.append(f"negative delta ({s['delta_mean']:+.3g}): chosen scores lower than rejected; are the "
                            "labels reversed?")
        elif lo <= 0:
            warnings.append(f"the delta ({s['delta_mean']:+.3g}) is not distinguishable from zero")
    w = a.get("weakness") or {}
    if w.get("both_far_above"):
        warnings.append("both sides are far above the student: pairs this strong can hurt (the paper's 72B-over-32B)")
    if w.get("chosen_far_below"):
        warnings.append("the chosen side is far below the student: expect less gain than the delta suggests")
    if warnings:
        verdict = f"{len(warnings)} warning sign{'s' if len(warnings) > 1 else ''}: read them before training"
        next_step = ("check each warning below: fix the pairs and re-run `deltalearn audit`, or train knowing what "
                     "the pairs also teach")
    elif scored:
        verdict = f"looks trainable: positive delta ({s['delta_mean']:+.3g} {s['quality']}) and no warning sign"
        next_step = f"train: deltalearn train --pairs {a.get('pairs_path', 'PAIRS')} --out runs/NAME ..."
    else:
        verdict = "pair health is fine, but the delta was not measured"
        next_step = "measure it: re-run with --utility NAME or --judge MODEL (and --student MODEL for weakness)"
    return {"verdict": verdict, "next_step": next_step, "warnings": warnings}


def eval_warnings(evals: dict[str, dict]) -> list[str]:
    """A warning per evaluated model whose every answer was cut at the token limit (scores of cut answers
    measure the limit, not the model)."""
    out = []
    for lab, ev in sorted(evals.items()):
        t = (ev.get("metrics") or {}).get("truncated")
        if isinstance(t, dict) and t.get("mean") == 1.0:
            out.append(f"every eval answer of {lab} ({t.get('n')}) was cut at the token limit: raise "
                       "eval.max_new_tokens, or read its scores as scores of unfinished answers")
    return out


def sample_responses(eval_dir: Path, labels: list[str], k: int = 3, chars: int = 400) -> list[dict]:
    """The first `k` prompts answered by every label, with each label's answer (cut to `chars` characters):
    [{"prompt", "answers": {label: text}}]."""
    rows: dict[str, dict[str, dict]] = {}
    for lab in labels:
        path = Path(eval_dir) / f"{lab}.responses.jsonl"
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                rows.setdefault(lab, {})[str(r.get("id"))] = r
    if not rows:
        return []
    first = next(iter(rows.values()))
    common = [i for i in first if all(i in rows[lab] for lab in rows)][:k]
    out = []
    for i in common:
        prompt = first[i].get("prompt")
        if isinstance(prompt, list):
            prompt = next((m.get("content") for m in reversed(prompt) if m.get("role") == "user"), str(prompt))
        answers = {}
        for lab in rows:
            text = str(rows[lab][i].get("response", ""))
            cut = " [...]" if len(text) > chars else ""
            answers[lab] = text[:chars] + cut + (" (cut at the token limit)" if rows[lab][i].get("truncated") else "")
        out.append({"prompt": _short(str(prompt), chars), "answers": answers})
    return out


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars] + " [...]"


def verdict_for_run(audits: list[dict], eval_warn: list[str], problems: list[str], has_evals: bool,
                    has_arms: bool) -> tuple[str, str, list[str]]:
    """(verdict, next step, warnings) for a whole run folder."""
    warnings = list(problems) + [w for a in audits for w in a["warnings"]] + list(eval_warn)
    if not has_arms and not has_evals:
        step = "train the pairs (deltalearn train) or run the recipe (deltalearn run)"
    elif has_arms and not has_evals:
        step = "evaluate: deltalearn eval --run RUN_DIR"
    else:
        step = "compare the arms' gains below; check the sample answers before trusting a number"
    if warnings:
        what = (f"{len(problems)} problem{'s' if len(problems) > 1 else ''}, " if problems else "") + \
            f"{len(warnings) - len(problems)} warning sign{'s' if len(warnings) - len(problems) != 1 else ''}"
        return what + " (listed below)", f"read the {'problems and ' if problems else ''}warnings first; " + step, \
            warnings
    return "no warning sign", step, warnings
