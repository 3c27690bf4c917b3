"""The dev criterion and the tables of benchmarks/corrupt_smollm2_dev.sh.

  python benchmarks/corrupt_smollm2_choose.py OUT CORRUPTION LR...     prints the lr chosen on dev
  python benchmarks/corrupt_smollm2_choose.py OUT --report NAME:S...   tables + OUT/results.json

The criterion (fixed before the run): an lr holds up when its dev answers are not more repetitive and not shorter
than the base's beyond 2 s.e. of the paired difference (repeated_ngrams: diff - 2 se <= 0; response_words:
diff + 2 se >= 0); of those, the highest dev preference accuracy of own over corrupted (implicit reward against the
base; ties: the larger mean margin); if none holds up, the smallest lr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from deltalearn.stats import mean_se, paired_diff

UTILS = ("response_words", "sentences", "repeated_ngrams", "bold_sections", "truncated")


def load(path: Path) -> dict[str, dict[str, float]]:
    """{metric: {id: score}} of one eval result."""
    r = json.loads(path.read_text())
    return {k: dict(zip(r["items"]["ids"][k], v)) for k, v in r["items"]["scores"].items() if r["items"]["ids"][k]}


def versus(base: dict, tuned: dict) -> dict[str, dict]:
    """Per utility: base mean, tuned mean, paired difference (tuned - base) with s.e., on the shared prompts."""
    out = {}
    for u in UTILS:
        k = u if u == "truncated" else f"utility/{u}"
        if k not in base or k not in tuned:
            continue
        ids = sorted(set(base[k]) & set(tuned[k]))
        b, t = [base[k][i] for i in ids], [tuned[k][i] for i in ids]
        d, se = paired_diff(b, t)
        out[u] = {"base": sum(b) / len(b), "tuned": sum(t) / len(t), "diff": d, "se": se, "n": len(ids)}
    for k in ("pref/accuracy", "pref/margin", "pref/logp_accuracy"):
        if k in tuned:
            m, se = mean_se(list(tuned[k].values()))
            out[k] = {"mean": m, "se": se, "n": len(tuned[k])}
    return out


def holds_up(v: dict) -> bool:
    rep, words = v["repeated_ngrams"], v["response_words"]
    return rep["diff"] - 2 * rep["se"] <= 0 and words["diff"] + 2 * words["se"] >= 0


def dev_table(out: Path, corruption: str, lrs: list[str]) -> dict[str, dict]:
    base = load(out / "dev" / "eval" / "base.json")
    rows = {}
    for lr in lrs:
        f = out / "dev" / "eval" / f"{corruption}_lr{lr}.json"
        if f.exists():
            rows[lr] = versus(base, load(f))
            rows[lr]["holds_up"] = holds_up(rows[lr])
    return rows


def choose(rows: dict[str, dict]) -> str:
    ok = [lr for lr, v in rows.items() if v["holds_up"]]
    if not ok:
        return min(rows, key=float)
    return max(ok, key=lambda lr: (rows[lr]["pref/accuracy"]["mean"], rows[lr]["pref/margin"]["mean"]))


def fmt(v: dict, key: str = "diff", digits: int = 2) -> str:
    return f"{v[key]:+.{digits}f} ± {v['se']:.{digits}f}"


def report(out: Path, specs: list[str]) -> None:
    times = {}
    if (out / "times.tsv").exists():
        for line in (out / "times.tsv").read_text().splitlines():
            name, s = line.split("\t")
            times[name] = times.get(name, 0) + int(s)
    results = {"corruptions": {}, "wall_s": times}
    base_h = load(out / "heldout" / "eval" / "base.json")
    for spec in specs:
        c, s = spec.split(":")
        lrs = sorted({p.name[len(f"{c}_lr"):-len(".json")] for p in (out / "dev" / "eval").glob(f"{c}_lr*.json")
                  if ".responses" not in p.name},
                     key=float)
        rows = dev_table(out, c, lrs)
        if not rows:
            continue
        chosen = choose(rows)
        entry = {"strength": float(s), "dev": rows, "chosen_lr": chosen}
        print(f"\n### {c} strength {s}: dev ({rows[lrs[0]]['response_words']['n']} prompts), paired vs base")
        print("| lr | words | sentences | repeated 4-grams | pref. accuracy (own > corrupted) | margin | holds up |")
        print("|---|---|---|---|---|---|---|")
        for lr, v in rows.items():
            mark = "**" if lr == chosen else ""
            print(f"| {mark}{lr}{mark} | {fmt(v['response_words'], digits=1)} | {fmt(v['sentences'], digits=1)} | "
                  f"{fmt(v['repeated_ngrams'], digits=3)} | {fmt(v['pref/accuracy'], 'mean')} | "
                  f"{fmt(v['pref/margin'], 'mean')} | {'yes' if v['holds_up'] else 'no'} |")
        f = out / "heldout" / "eval" / f"{c}.json"
        if f.exists():
            h = versus(base_h, load(f))
            entry["heldout"] = h
            print(f"\nheld out ({h['response_words']['n']} eval prompts), lr {chosen}, tuned - base:")
            for u in UTILS:
                if u in h:
                    print(f"  {u}: base {h[u]['base']:.3f}, tuned {h[u]['tuned']:.3f}, diff {fmt(h[u], digits=3)}")
            for k in ("pref/accuracy", "pref/margin"):
                print(f"  {k}: {fmt(h[k], 'mean')}")
        results["corruptions"][c] = entry
    print("\nwall seconds:", json.dumps(times))
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    if sys.argv[2] == "--report":
        report(out, sys.argv[3:])
    else:
        print(choose(dev_table(out, sys.argv[2], sys.argv[3:])))
