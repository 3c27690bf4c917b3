"""The report: one self-contained HTML page (plots embedded as PNG data) plus a Markdown table, over run folders.

For each run: where its data came from (manifest: rule, models, loss, delta statistics), how training went (loss,
reward margin and preference accuracy per step, from each arm's metrics.jsonl), what changed (eval results before
and after with the gain and its standard error, paired on the same items when both sides have them), and the
experiment's own tables and plots (`results.json`). Controls get bar charts; a sweep's table with a delta and a
gain column gets a gain-vs-delta scatter (paper, Analysis: gain rises with delta, then plateaus).

Honest numbers: every figure comes from a file in the run folder. A missing or corrupt artifact is shown as a
problem naming the file, never filled in; a run without a COMPLETED marker on every arm is marked incomplete.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from deltalearn.glance import human_rows, label, value
from deltalearn.io import DataError, iter_jsonl, read_json, write_text_atomic
from deltalearn.stats import fmt_mean_se, paired_diff
from deltalearn.render import _fmt, _md_table, _plt, _png

CURVE_KEYS = [("loss", "loss"), ("rewards/margin", "reward margin"), ("rewards/accuracy", "preference accuracy")]
BASE_LABEL = "base"


@dataclass
class Run:
    path: Path
    name: str
    manifest: Optional[dict] = None
    arms: dict[str, dict] = field(default_factory=dict)
    """arm -> {"metrics": [rows], "completed": bool, "summary": dict | None}"""
    evals: dict[str, dict] = field(default_factory=dict)
    results: Optional[dict] = None
    delta_stats: Optional[dict] = None
    pair_summary: dict[str, dict] = field(default_factory=dict)
    """pairs folder name -> its pair_summary.json (one per pair set: `pairs`, `pairs-<arm>` for control arms)"""
    audits: dict[str, dict] = field(default_factory=dict)
    """pair set name -> its `deltalearn audit` result (RUN/audit/<name>.json)"""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    train_configs: dict[str, dict] = field(default_factory=dict)
    """arm -> its train_config.json: provenance for runs built command by command (no manifest)"""

    @property
    def status(self) -> str:
        if self.problems:
            return "incomplete"
        # Built command by command (generate/pair/train/eval): the numbers are there, the recipe record is not.
        return "complete" if self.manifest is not None else "no-manifest"


# ---------------------------------------------------------------------------------------------------------
# Reading a run folder: every artifact optional, every bad one a named problem
# ---------------------------------------------------------------------------------------------------------


def _try(run: Run, fn, *args):
    try:
        return fn(*args)
    except DataError as e:
        run.problems.append(str(e))
    except (OSError, UnicodeDecodeError) as e:
        run.problems.append(f"{args[0] if args else ''}: unreadable ({e})")
    return None


def _check_eval(path: Path, obj: Any) -> dict:
    if not isinstance(obj, dict) or not isinstance(obj.get("metrics"), dict):
        raise DataError(path, "not an eval result: expected an object with a 'metrics' mapping")
    for k, v in obj["metrics"].items():
        if not isinstance(v, dict) or not isinstance(v.get("mean"), (int, float)):
            raise DataError(path, "each metric needs a numeric 'mean'", field=f"metrics.{k}")
    return obj


def _check_results(path: Path, obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise DataError(path, "expected a JSON object with 'tables' and 'plots'")
    for i, t in enumerate(obj.get("tables") or []):
        if not isinstance(t, dict) or not isinstance(t.get("columns"), list) or not isinstance(t.get("rows"), list):
            raise DataError(path, "a table needs 'columns' and 'rows' lists", field=f"tables[{i}]")
        for j, r in enumerate(t["rows"]):
            if not isinstance(r, list) or len(r) != len(t["columns"]):
                raise DataError(path, f"row has {len(r) if isinstance(r, list) else '?'} cells for "
                                f"{len(t['columns'])} columns", field=f"tables[{i}].rows[{j}]")
    for i, p in enumerate(obj.get("plots") or []):
        if not isinstance(p, dict) or not isinstance(p.get("path"), str):
            raise DataError(path, "a plot needs a 'path' (relative to the run folder)", field=f"plots[{i}]")
    return obj


def _read_metrics(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def _find_delta_stats(run: Run) -> Optional[dict]:
    m = run.manifest or {}
    for candidate in (m.get("delta_stats"), (m.get("pair") or {}).get("delta_stats") if isinstance(m.get("pair"), dict)
                      else None, ((m.get("stages") or {}).get("pair") or {}).get("delta_stats")
                      if isinstance(m.get("stages"), dict) else None):
        if isinstance(candidate, dict):
            return candidate
    for name in ("delta_stats.json", "stats.json"):
        f = run.path / "pairs" / name
        if f.exists():
            obj = _try(run, read_json, f)
            if isinstance(obj, dict):
                return obj
    return None


def load_run(path: str | Path) -> Run:
    """Read whatever a run folder holds. Raises DataError only if the folder itself does not exist."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(p, "run folder not found")
    run = Run(path=p, name=p.name)
    mf = p / "manifest.json"
    if mf.exists():
        from deltalearn.manifest import read_manifest

        m = _try(run, read_manifest, mf)
        if m is not None and not isinstance(m, dict):
            run.problems.append(f"{mf}: expected a JSON object")
        elif m is not None:
            run.manifest = m
            run.name = str(m.get("name") or (m.get("recipe") or {}).get("name") or p.name)
    else:
        run.notes.append(f"{mf}: not found (a run built command by command): provenance below is read from "
                         "arms/*/train_config.json and pairs*/pair_summary.json; `deltalearn run RECIPE` records it")
    for d in sorted((p / "arms").glob("*")) if (p / "arms").is_dir() else []:
        if not d.is_dir():
            continue
        arm: dict[str, Any] = {"metrics": [], "completed": (d / "COMPLETED").exists(), "summary": None}
        if (d / "metrics.jsonl").exists():
            arm["metrics"] = _try(run, _read_metrics, d / "metrics.jsonl") or []
        if (d / "train_summary.json").exists():
            arm["summary"] = _try(run, read_json, d / "train_summary.json")
        if (d / "train_config.json").exists():
            tc = _try(run, read_json, d / "train_config.json")
            if isinstance(tc, dict):
                run.train_configs[d.name] = tc
        if not arm["completed"]:
            last = arm["metrics"][-1].get("step") if arm["metrics"] else None
            run.problems.append(f"{d}: training did not finish (no COMPLETED marker"
                                f"{f'; last logged step {last}' if last is not None else ''})")
        run.arms[d.name] = arm
    for f in sorted((p / "eval").glob("*.json")) if (p / "eval").is_dir() else []:
        if f.name.endswith(".meta.json"):
            continue
        obj = _try(run, read_json, f)
        if obj is None:
            continue
        ev = _try(run, _check_eval, f, obj)
        if ev is not None:
            run.evals[str(ev.get("label") or f.stem)] = ev
    rf = p / "results.json"
    if rf.exists():
        obj = _try(run, read_json, rf)
        if obj is not None:
            run.results = _try(run, _check_results, rf, obj)
    run.delta_stats = _find_delta_stats(run)
    for ps in sorted(p.glob("pairs*/pair_summary.json")):
        obj = _try(run, read_json, ps)
        if isinstance(obj, dict):
            run.pair_summary[ps.parent.name] = obj
    for af in sorted((p / "audit").glob("*.json")) if (p / "audit").is_dir() else []:
        obj = _try(run, read_json, af)
        if isinstance(obj, dict) and isinstance(obj.get("health"), dict) and isinstance(obj.get("delta"), dict):
            run.audits[af.stem] = obj
        elif obj is not None:
            run.problems.append(f"{af}: not a `deltalearn audit` result (no 'health' and 'delta' sections)")
    if not run.arms and not run.evals and not run.results and not run.audits:
        run.problems.append(f"{p}: no arms/, eval/ or results.json: nothing to report yet")
    return run


# ---------------------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------------------


def item_scores(ev: dict, metric: str) -> Optional[tuple[list, list]]:
    """(ids, per-item scores) of one metric, from either layout an eval file may use: deltalearn.evaluate's
    {"items": {"ids": {metric: [...]}, "scores": {metric: [...]}}} or {"per_prompt": {"ids": [...], metric: [...]}}."""
    items = ev.get("items")
    if isinstance(items, dict) and isinstance(items.get("scores"), dict) and metric in items["scores"]:
        ids = items.get("ids")
        ids = ids.get(metric) if isinstance(ids, dict) else ids
        scores = items["scores"][metric]
    elif isinstance(ev.get("per_prompt"), dict) and metric in ev["per_prompt"]:
        ids, scores = ev["per_prompt"].get("ids"), ev["per_prompt"][metric]
    else:
        return None
    if not isinstance(ids, list) or not isinstance(scores, list) or len(ids) != len(scores):
        return None
    return ids, scores


def gain(base: dict, after: dict, metric: str) -> Optional[dict]:
    """after - base for one metric, with its standard error: paired over shared item ids when both results carry
    per-item scores (far tighter: same prompts), else from the two standard errors."""
    a, b = base["metrics"].get(metric), after["metrics"].get(metric)
    if a is None or b is None:
        return None
    ia, ib = item_scores(base, metric), item_scores(after, metric)
    if ia and ib:
        bmap = dict(zip(*ib))
        shared = [(x, bmap[i]) for i, x in zip(*ia) if i in bmap]
        if len(shared) >= 2 and all(isinstance(v, (int, float)) for pair in shared for v in pair):
            d, se = paired_diff([x for x, _ in shared], [y for _, y in shared])
            return {"gain": d, "se": se, "n": len(shared), "paired": True}
    se_a, se_b = a.get("se"), b.get("se")
    both = isinstance(se_a, (int, float)) and isinstance(se_b, (int, float))
    se = math.sqrt(se_a ** 2 + se_b ** 2) if both else None
    return {"gain": b["mean"] - a["mean"], "se": se, "n": min(a.get("n") or 0, b.get("n") or 0), "paired": False}


def _pm(mean: Optional[float], se: Optional[float], *, signed: bool = False) -> str:
    """At the precision the s.e. allows, as `deltalearn eval` prints it (18.75 ± 0.48, not 18.75 ± 0.479)."""
    if mean is None:
        return "–"
    return fmt_mean_se(mean, se, signed=signed)


def eval_table(run: Run) -> Optional[dict]:
    """Rows: metric | base | each arm | gain of each arm vs base. None when there is nothing to compare."""
    if not run.evals:
        return None
    labels = sorted(run.evals, key=lambda k: (k != BASE_LABEL, k))
    metrics: list[str] = []
    for lab in labels:
        metrics += [m for m in run.evals[lab]["metrics"] if m not in metrics]
    base = run.evals.get(BASE_LABEL)
    arms = [lab for lab in labels if lab != BASE_LABEL]
    cols = ["metric"] + labels + ([f"gain {a}" for a in arms] if base else [])
    rows = []
    for m in metrics:
        row = [m]
        for lab in labels:
            v = run.evals[lab]["metrics"].get(m)
            row.append(_pm(v["mean"], v.get("se")) if v else "–")
        if base:
            for a in arms:
                g = gain(base, run.evals[a], m)
                row.append("–" if g is None else _pm(g["gain"], g["se"], signed=True) + (" (paired)" if g["paired"]
                                                                                       else ""))
        rows.append(row)
    return {"title": "Eval: before (base) and after", "columns": cols, "rows": rows,
            "note": "mean ± standard error; gains are paired over the same items where per-item scores exist"}


def provenance(run: Run) -> list[tuple[str, str]]:
    m = run.manifest or {}
    rec = m.get("recipe") or m.get("config") or {}
    out: list[tuple[str, str]] = []

    def add(k, v):
        if v not in (None, "", [], {}):
            out.append((k, v if isinstance(v, str) else ", ".join(map(str, v)) if isinstance(v, list) else str(v)))

    add("recipe kind", rec.get("kind"))
    prompts = rec.get("prompts") or {}
    add("prompts", prompts.get("path") or prompts.get("dataset"))
    gen = rec.get("generate") or {}
    add("generators", gen.get("models"))
    pair = rec.get("pair") or {}
    add("pair rule", pair.get("rule"))
    add("control", pair.get("control") if pair.get("control") not in (None, "none") else None)
    tr = rec.get("train") or {}
    if not pair and run.pair_summary:  # no manifest: what the pair sets themselves record
        pair = {"rule": ", ".join(sorted({str(s.get("rule")) for s in run.pair_summary.values() if s.get("rule")})),
                "control": ", ".join(sorted({str(s.get("control")) for s in run.pair_summary.values()
                                             if s.get("control") not in (None, "none")}))}
        add("pair rule", pair["rule"])
        add("control", pair["control"])
    if not tr and run.train_configs:  # no manifest: what each arm's trainer recorded
        tr = next(iter(run.train_configs.values()))
        add("student", sorted({str(c.get("model")) for c in run.train_configs.values()}))
        add("pairs", sorted({str(c.get("pairs_source")) for c in run.train_configs.values() if c.get("pairs_source")}))
    else:
        add("student", tr.get("model"))
    if tr.get("loss"):
        add("loss", f"{tr.get('loss')} (beta {tr.get('beta')}, lr {tr.get('lr')}, batch {tr.get('batch_size')})")
    add("arms", [a.get("name") for a in rec.get("arms") or [] if isinstance(a, dict)] or list(run.arms))
    for k in ("git", "git_sha", "seed", "created", "finished"):
        add(k.replace("_", " "), m.get(k))
    stages = m.get("stages")
    if isinstance(stages, dict) and stages:
        add("stage times", ", ".join(f"{k} {v.get('seconds')} s" for k, v in stages.items() if isinstance(v, dict)))
    versions = m.get("versions")
    if isinstance(versions, dict):
        add("versions", ", ".join(f"{k} {v}" for k, v in versions.items()))
    return out


# ---------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg, PNG bytes)
# ---------------------------------------------------------------------------------------------------------


def curves_png(run: Run) -> Optional[bytes]:
    series = {a: d["metrics"] for a, d in run.arms.items() if d["metrics"]}
    keys = [(k, t) for k, t in CURVE_KEYS if any(k in r for rows in series.values() for r in rows)]
    if not series or not keys:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.0), squeeze=False)
    for ax, (k, title) in zip(axes[0], keys):
        for arm, rows in series.items():
            pts = [(r.get("step", i + 1), r[k]) for i, r in enumerate(rows) if isinstance(r.get(k), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=arm)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def bars_png(run: Run, max_metrics: int = 4) -> Optional[bytes]:
    """Bar chart of the headline metrics for base and every arm (the paper's controls side by side)."""
    if len(run.evals) < 2:
        return None
    labels = sorted(run.evals, key=lambda k: (k != BASE_LABEL, k))
    prefer = ("utility/", "judge/win_rate", "pref/accuracy", "pref/logp_accuracy", "lm_eval/")
    metrics = []
    for p in prefer:
        for lab in labels:
            for m in run.evals[lab]["metrics"]:
                if m.startswith(p) and m not in metrics:
                    metrics.append(m)
    metrics = metrics[:max_metrics] or [m for m in run.evals[labels[0]]["metrics"]][:max_metrics]
    if not metrics:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        vals = [run.evals[lab]["metrics"].get(m) for lab in labels]
        means = [v["mean"] if v else float("nan") for v in vals]
        ses = [(v.get("se") or 0) if v else 0 for v in vals]
        colors = ["#9aa5b1" if lab == BASE_LABEL else "#3b6ea5" for lab in labels]
        ax.bar(range(len(labels)), means, yerr=ses, capsize=4, color=colors)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(m, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _words(column: str) -> set[str]:
    return set(re.findall(r"[a-z.]+", str(column).lower().replace("_", " ")))


def _col(columns: list[str], word: str, *, exclude: tuple[str, ...] = ()) -> Optional[int]:
    """First column whose words include `word` and none of `exclude` (word match: 'base' is not 'se')."""
    for i, c in enumerate(columns):
        w = _words(c)
        if word in w and not any(x in w for x in exclude):
            return i
    return None


_PM = re.compile(r"^\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*(?:±|\+/-)\s*([\d.]+(?:e[-+]?\d+)?)")


def _num(x: Any) -> tuple[Optional[float], Optional[float]]:
    """A number, or 'mean ± se' text, as (value, se)."""
    if isinstance(x, bool):
        return None, None
    if isinstance(x, (int, float)):
        return float(x), None
    if isinstance(x, str):
        m = _PM.match(x)
        if m:
            return float(m.group(1)), float(m.group(2))
        try:
            return float(x), None
        except ValueError:
            return None, None
    return None, None


def scatter_png(table: dict) -> Optional[bytes]:
    """Gain vs delta for a sweep table: a column with the word 'delta', one with 'gain', optionally a 'gain se'
    column or 'mean ± se' cells (paper, Analysis: gain rises with delta, then plateaus)."""
    cols = table["columns"]
    se_words = ("se", "s.e.", "stderr")
    xi = _col(cols, "delta", exclude=se_words)
    yi = _col(cols, "gain", exclude=se_words)
    if xi is None or yi is None:
        return None
    ei = next((i for i, c in enumerate(cols) if "gain" in _words(c) and _words(c) & set(se_words)), None)
    li = next((i for w in ("arm", "pair") for i in [_col(cols, w)] if i is not None), None)
    pts = []
    for r in table["rows"]:
        (x, _), (y, yse) = _num(r[xi]), _num(r[yi])
        if x is None or y is None or math.isnan(x) or math.isnan(y):
            continue
        e = _num(r[ei])[0] if ei is not None else yse
        pts.append((x, y, e or 0.0, str(r[li]) if li is not None else ""))
    if len(pts) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="o", capsize=3)
    for x, y, _, lab in pts:
        if lab:
            ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(str(cols[xi]))
    ax.set_ylabel(str(cols[yi]))
    ax.set_title(table.get("title", "gain vs delta"), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1150px;color:#1f2933;
line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:36px;border-bottom:2px solid #e4e7eb;padding-bottom:4px}
h3{margin-top:22px;font-size:1.05em;color:#323f4b}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.88em}
th,td{border:1px solid #d9dee3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f4f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.8em;font-weight:600}
.complete{background:#d5f5e3;color:#186a3b}.incomplete{background:#fde2e1;color:#922b21}
.no-manifest{background:#fef5d4;color:#7c5e10}
.problems{background:#fff5f5;border-left:4px solid #c0392b;padding:6px 12px;margin:8px 0;font-size:.88em}
.notes{color:#616e7c;font-size:.85em}.note{color:#616e7c;font-size:.82em;margin-top:-8px}
img{max-width:100%;border:1px solid #e4e7eb;margin:6px 0}
code{background:#f0f4f8;padding:1px 4px;border-radius:3px}
.glance{background:#f0f4f8;border-left:4px solid #3e4c59;padding:6px 12px;margin:8px 0}
.warn{background:#fffbea;border-left:4px solid #d69e2e;padding:6px 12px;margin:8px 0;font-size:.9em}
td.answer{white-space:pre-wrap;max-width:900px}
"""

# Lets a headless browser (and the report test) confirm that every embedded image decoded.
CHECK_SCRIPT = """<script>
window.addEventListener('load',function(){var im=document.images,ok=0;for(var i=0;i<im.length;i++){
if(im[i].complete&&im[i].naturalWidth>0)ok++;}document.body.setAttribute('data-images-total',im.length);
document.body.setAttribute('data-images-decoded',ok);});
</script>"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


_NUMERIC = re.compile(r"^[-+–]?[\d.,]+(e[-+]?\d+)?( ± [\d.,]+(e[-+]?\d+)?)?( \(paired\))?$|^–$")


def _flatten(d: dict, prefix: str = "") -> dict:
    """{'dropped': {'empty': 0}} -> {'dropped.empty': 0}: nested counts as rows of one table."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not (isinstance(v, dict) and not v):
            out[f"{prefix}{k}"] = v
    return out


def _cell(v: Any) -> Any:
    if v is None or isinstance(v, (int, float, str)):
        return v
    if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
        return "[" + ", ".join(_fmt(float(x)) for x in v) + "]"
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return ", ".join(v)
    return str(v)


def _html_table(t: dict) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t["columns"])
    body = ""
    for r in t["rows"]:
        cells = ""
        for c in r:
            cls = ' class="num"' if isinstance(c, (int, float)) or (isinstance(c, str) and _NUMERIC.match(c)) else ""
            cells += f"<td{cls}>{html.escape(_fmt(c) if not isinstance(c, str) else c)}</td>"
        body += f"<tr>{cells}</tr>"
    title = f"<h3>{html.escape(t['title'])}</h3>" if t.get("title") else ""
    note = f'<p class="note">{html.escape(t["note"])}</p>' if t.get("note") else ""
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def _train_table(run: Run) -> Optional[dict]:
    if not run.arms:
        return None
    rows = []
    for name, a in run.arms.items():
        last = a["metrics"][-1] if a["metrics"] else {}
        s = a["summary"] if isinstance(a["summary"], dict) else {}
        rows.append([name, "yes" if a["completed"] else "no", last.get("step", len(a["metrics"])) if a["metrics"]
                     else 0, last.get("loss"), last.get("rewards/margin"), last.get("rewards/accuracy"),
                     s.get("wall_s"), s.get("tokens_per_s")])
    return {"title": "Training", "columns": ["arm", "completed", "steps", "final loss", "final margin",
                                             "final accuracy", "wall s", "tokens/s"], "rows": rows,
            "note": "final = last logged optimizer step (per-batch values, noisy)"}


def _summary_row(run: Run) -> list:
    headline = "–"
    base = run.evals.get(BASE_LABEL)
    if base:
        parts = []
        for lab in sorted(run.evals):
            if lab == BASE_LABEL:
                continue
            names = list(run.evals[lab]["metrics"])
            heads = [m for m in names if m.startswith(("utility/", "judge/win_rate", "lm_eval/"))] or names[:1]
            for m in heads[:1]:
                g = gain(base, run.evals[lab], m)
                if g:
                    parts.append(f"{lab} {m}: {_pm(g['gain'], g['se'], signed=True)}")
        headline = "; ".join(parts[:4]) or "–"
    prov = dict(provenance(run))
    return [run.name, run.status, prov.get("pair rule", "–"), prov.get("student", "–"), len(run.arms), headline]


def _glance(run: Run) -> tuple[str, list[str]]:
    """The run's verdict, next step and warnings (audits' warning signs, evals whose every answer was cut), first."""
    from deltalearn.glance import audit_glance, eval_warnings, verdict_for_run

    audits = [audit_glance(a) for a in run.audits.values()]
    verdict, step, warnings = verdict_for_run(audits, eval_warnings(run.evals), run.problems, bool(run.evals),
                                              bool(run.arms))
    warnings = [w for w in warnings if w not in run.problems]  # the problems have their own box above
    h = (f"<div class='glance'><b>Verdict: {html.escape(verdict)}.</b><br>Next step: {html.escape(step)}.</div>"
         + "".join(f"<div class='warn'>&#9888; Warning: {html.escape(w)}</div>" for w in warnings))
    md = [f"**Verdict: {verdict}.** Next step: {step}.", ""] + [f"- WARNING: {w}" for w in warnings]
    return h, md + ([""] if warnings else [])


def sample_table(run: Run, k: int = 3) -> Optional[dict]:
    """A few eval prompts with each model's answer (base first): what the numbers are numbers of."""
    from deltalearn.glance import sample_responses

    labels = sorted(run.evals, key=lambda x: (x != BASE_LABEL, x))
    samples = sample_responses(run.path / "eval", labels, k=k)
    if not samples:
        return None
    rows = []
    for i, s in enumerate(samples, 1):
        rows.append([f"prompt {i}", s["prompt"]])
        rows += [[f"  {lab}", text] for lab, text in s["answers"].items()]
    return {"title": "Sample answers (the first eval prompts)", "columns": ["", "text"], "rows": rows,
            "note": "answers cut to 400 characters; the full ones are in eval/<label>.responses.jsonl"}


def render(runs: list[Run]) -> tuple[str, str]:
    """(html, markdown) for a list of loaded runs."""
    summary = {"title": "Runs", "columns": ["run", "status", "rule", "student", "arms", "headline gain vs base"],
               "rows": [_summary_row(r) for r in runs]}
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>deltalearn report</title><style>{CSS}</style>"
         "</head><body>", "<h1>deltalearn report</h1>",
         f"<p class='notes'>{len(runs)} run(s). Every number comes from a file in the run folder; problems are "
         "listed where found, never filled in.</p>", _html_table(summary)]
    md = ["# deltalearn report", "", _md_table(summary), ""]
    for run in runs:
        h.append(f"<h2>{html.escape(run.name)} <span class='status {run.status}'>{run.status}</span></h2>")
        h.append(f"<p class='notes'><code>{html.escape(str(run.path))}</code></p>")
        md += [f"## {run.name} ({run.status})", "", f"`{run.path}`", ""]
        if run.problems:
            h.append("<div class='problems'><b>Problems</b><ul>" +
                     "".join(f"<li>{html.escape(p)}</li>" for p in run.problems) + "</ul></div>")
            md += ["Problems:", *[f"- {p}" for p in run.problems], ""]
        if run.notes:
            h.append("<p class='notes'>" + "<br>".join(html.escape(n) for n in run.notes) + "</p>")
        gh, gm = _glance(run)
        h.append(gh)
        md += gm
        prov = provenance(run)
        if prov:
            t = {"title": "Provenance", "columns": ["field", "value"], "rows": [list(x) for x in prov]}
            h.append(_html_table(t))
            md += [_md_table(t), ""]
        if run.delta_stats:
            flat = [[k, _cell(v)] for k, v in human_rows(_flatten(run.delta_stats))]
            t = {"title": "Delta statistics (pairs)", "columns": ["statistic", "value"], "rows": flat}
            h.append(_html_table(t))
            md += [_md_table(t), ""]
        if run.pair_summary:
            sets = list(run.pair_summary)
            flats = {name: _flatten(d) for name, d in run.pair_summary.items()}
            keys = list(dict.fromkeys(k for d in flats.values() for k in d))
            flat = [[label(k)] + [_cell(value(k, flats[s].get(k))) for s in sets] for k in keys]
            t = {"title": "Pairing (filters and counts)", "columns": ["field", *sets], "rows": flat}
            h.append(_html_table(t))
            md += [_md_table(t), ""]
        for name, a in run.audits.items():
            from deltalearn.audit import audit_tables, histogram_png

            h.append(f"<h3>Audit of pair set {html.escape(name)} (before training)</h3>")
            md += [f"### Audit of pair set {name} (before training)", ""]
            for t in audit_tables(a):
                h.append(_html_table(t))
                md += [_md_table(t), ""]
            png = histogram_png(a)
            if png:
                h.append(_img(png, f"audit {name}: per-pair delta histogram"))
        tt = _train_table(run)
        if tt:
            h.append(_html_table(tt))
            md += [_md_table(tt), ""]
        png = curves_png(run)
        if png:
            h.append("<h3>Training curves</h3>" + _img(png, f"{run.name} training curves"))
        et = eval_table(run)
        if et:
            h.append(_html_table(et))
            md += [_md_table(et), ""]
            for lab, ev in sorted(run.evals.items()):
                ver = ev.get("evaluator") or {}
                if isinstance(ver, str):
                    ver = {"name": ver.split("/")[0], "version": ver.split("/")[-1] if "/" in ver else "?"}
                if ver:
                    h.append(f"<p class='note'>{html.escape(lab)}: {html.escape(str(ev.get('model', '')))} — "
                             f"evaluator {html.escape(str(ver.get('name', '')))} "
                             f"v{html.escape(str(ver.get('version')))}"
                             f"{', lm-eval ' + html.escape(str(ver['lm_eval'])) if ver.get('lm_eval') else ''}</p>")
        samples = sample_table(run)
        if samples:
            h.append(_html_table(samples).replace("<td>", "<td class='answer'>"))
            md += [_md_table({**samples, "rows": [[a, b.replace("\n", " / ")] for a, b in samples["rows"]]}), ""]
        png = bars_png(run)
        if png:
            h.append("<h3>Base and arms side by side</h3>" + _img(png, f"{run.name} eval bars"))
        if run.results:
            exp = run.results.get("experiment")
            if exp:
                h.append(f"<h3>Experiment: {html.escape(str(exp))}</h3>")
                md += [f"### Experiment: {exp}", ""]
            for t in run.results.get("tables") or []:
                h.append(_html_table(t))
                md += [_md_table(t), ""]
                png = scatter_png(t)
                if png:
                    h.append(_img(png, f"{t.get('title', '')} gain vs delta"))
            for p in run.results.get("plots") or []:
                f = run.path / p["path"]
                if not f.exists():
                    msg = f"{f}: plot named in results.json is missing"
                    run.problems.append(msg)
                    h.append(f"<div class='problems'>{html.escape(msg)}</div>")
                    continue
                data = f.read_bytes()
                if not data.startswith(b"\x89PNG"):
                    msg = f"{f}: not a PNG file"
                    run.problems.append(msg)
                    h.append(f"<div class='problems'>{html.escape(msg)}</div>")
                    continue
                h.append(f"<h3>{html.escape(str(p.get('title', f.name)))}</h3>" + _img(data, str(p.get("title", ""))))
    h.append(CHECK_SCRIPT + "</body></html>")
    return "\n".join(h), "\n".join(md).rstrip() + "\n"


def build_report(run_dirs: list[str | Path], out: Optional[str | Path] = None) -> Path:
    """Write the HTML report (and report.md beside it) for `run_dirs`; return the HTML path.

    Default `out`: RUN/report.html for one run, ./report.html for several.
    """
    if not run_dirs:
        raise DataError(None, "no run folders given")
    runs = [load_run(d) for d in run_dirs]
    page, md = render(runs)
    out = Path(out) if out else (Path(run_dirs[0]) / "report.html" if len(run_dirs) == 1 else Path("report.html"))
    claim_report(out)
    write_text_atomic(out, page)
    write_text_atomic(out.with_suffix(".md"), md)
    return out


def claim_report(out: Path) -> None:
    """The HTML and the .md beside it are new files or reports written before; anything else is refused."""
    from deltalearn.outputs import claim_file, is_report_html, is_report_md

    if out.suffix == ".md":
        raise DataError(out, "--out names the HTML report (its Markdown goes beside it as .md); give NAME.html")
    claim_file(out, "report", is_report_html)
    claim_file(out.with_suffix(".md"), "report", is_report_md)


def add_cli_args(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (runs/NAME)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html for one run, else ./report.html)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any run is incomplete, has a bad artifact, or has no manifest.json")


def run_cli(args) -> int:
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "report.html" if len(args.runs) == 1
                                           else Path("report.html"))
    claim_report(out)
    runs = [load_run(d) for d in args.runs]
    page, md = render(runs)
    write_text_atomic(out, page)
    write_text_atomic(out.with_suffix(".md"), md)
    print(md)
    bad = [r for r in runs if r.problems or r.manifest is None]
    for r in bad:
        for p in r.problems or [f"{r.path / 'manifest.json'}: not found (provenance is not recorded)"]:
            print(f"deltalearn report: {r.name}: {p}", file=sys.stderr)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 1 if (args.strict and bad) else 0
