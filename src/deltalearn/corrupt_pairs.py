"""The `corrupt` pairing rule: rejected = a corrupted copy of a response, chosen = the response (issue 32).

    deltalearn pair --generations gens/ --rule corrupt --chosen MODEL --corruption drop_sentence --strength 1

One generation set is enough: no weaker model, no ladder. `pair.chosen` names the chosen set (default: the only
one); `pair.rejected` names the set whose corrupted copy is rejected (default: the chosen set itself, so the two
sides differ only by the corruption). The corruption (`deltalearn.corruptions`) runs with a `random.Random` seeded
by a stable hash of `pair.seed` and the prompt id, so a pair is the same whatever rows surround it, and the m
items of strength m are the first m of the same random order as strength m-1's (corruptions nest across
strengths). Every pair records its provenance: `corruption`, `corruption_strength`, `corruption_seed`,
`corruption_source` and `corruption_info` (what the corruption did: items changed, sentences dropped, words cut),
which `deltalearn audit` reads.

Strength 0 is the identity: the pairs are kept though both sides are equal (the zero-delta control; DPO's
gradient on them is exactly zero). At strength > 0 a response the corruption cannot break (too few sentences,
items or words) is dropped and counted as `unchanged`.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from statistics import mean

from deltalearn.corruptions import apply, check_strength, get_corruption
from deltalearn.recipe import ConfigError, PairConfig

FILTERS = ("missing", "empty", "truncated", "unchanged")


def pair_seed(seed: int, pid: str) -> int:
    """The per-prompt seed: a stable hash of (seed, prompt id), the same on every machine and Python run."""
    # 7 bytes (< 2**56): the seed fits the int64 column of a saved dataset
    return int.from_bytes(hashlib.sha256(f"corrupt:{seed}:{pid}".encode()).digest()[:7], "big")


def _last_user_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


def _index(label: str, rows: list[dict]) -> dict[str, dict]:
    from deltalearn.io import DataError

    out: dict[str, dict] = {}
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get("response"), str) or "id" not in r:
            raise DataError(label, "generation row without 'id' or a string 'response'", row=i)
        if r["id"] in out:
            raise DataError(label, f"duplicate id '{r['id']}'", row=i, field="id")
        out[r["id"]] = r
    return out


def _label(name: str, labels: list[str], what: str) -> str:
    if name in labels:
        return name
    import difflib

    close = difflib.get_close_matches(name, labels, n=1)
    raise ConfigError(f"pair.{what}: '{name}' is not a generation set (have: {', '.join(labels)})"
                      + (f"; did you mean '{close[0]}'?" if close else ""))


def _bad(row: dict, drop_truncated: bool) -> str | None:
    if not row["response"].strip():
        return "empty"
    if drop_truncated and row.get("truncated"):
        return "truncated"
    return None


def _row(pid: str, c: dict, r: dict, text: str, chosen: str, rejected: str) -> dict:
    """A pair row as `pairs.make_pairs` writes them; the corrupted copy is a finished answer unless its source
    was cut at max_new_tokens."""
    from deltalearn.tokenize import as_messages

    row = {"id": pid, "prompt_id": pid, "prompt": as_messages(c["prompt"]),
           "chosen": [{"role": "assistant", "content": c["response"]}],
           "rejected": [{"role": "assistant", "content": text}],
           "chosen_model": chosen, "rejected_model": rejected, "rule": "corrupt",
           "chosen_score": None, "rejected_score": None, "chosen_size": None, "rejected_size": None,
           "chosen_truncated": bool(c.get("truncated")), "rejected_truncated": bool(r.get("truncated"))}
    ref = c.get("reference", r.get("reference"))
    if ref is not None:
        row["reference"] = ref
    return row


def rejected_label(source: str, corruption: str, strength: float) -> str:
    """The rejected side's set label: `SOURCE~CORRUPTION@STRENGTH`."""
    return f"{source}~{corruption}@{strength:g}"


def corrupt_pairs(generations: dict[str, list[dict]], cfg: PairConfig) -> tuple[list[dict], dict]:
    """Pairs (chosen, corrupted copy) by `cfg` (rule 'corrupt'), and a summary counting every dropped prompt;
    `pairs.make_pairs` applies the control.
    Rows have the columns of `pairs.make_pairs`'s rows, plus the corruption's provenance."""
    labels = list(generations)
    if not labels:
        raise ConfigError("rule 'corrupt' needs a generation set")
    if cfg.control == "tie":
        raise ConfigError("control 'tie' is undefined for rule 'corrupt' (a corrupted copy is worse by "
                          "construction); its zero-delta control is pair.strength 0")
    name = cfg.corruption
    corr = get_corruption(name)
    strength = check_strength(name, corr, cfg.strength)
    if cfg.chosen is None and len(labels) > 1:
        raise ConfigError(f"rule 'corrupt': pair.chosen must name the chosen set when there are several "
                          f"(generation sets: {', '.join(labels)})")
    chosen = _label(cfg.chosen, labels, "chosen") if cfg.chosen else labels[0]
    source = _label(cfg.rejected, labels, "rejected") if cfg.rejected else chosen
    idx = {lab: _index(lab, rows) for lab, rows in generations.items()}
    rej_label = rejected_label(source, name, strength)
    dropped = Counter({k: 0 for k in FILTERS})
    pairs: list[dict] = []
    for pid, c in idx[chosen].items():
        r = idx[source].get(pid)
        if r is None:
            dropped["missing"] += 1
            continue
        why = _bad(c, cfg.drop_truncated) or _bad(r, cfg.drop_truncated)
        if why:
            dropped[why] += 1
            continue
        seed = pair_seed(cfg.seed, pid)
        ctx = {"prompt": _last_user_text(c["prompt"]), "reference": c.get("reference", r.get("reference")),
               "id": pid, **cfg.corruption_args}
        text, info = apply(name, r["response"], strength, random.Random(seed), ctx)
        if strength > 0 and text.strip() == r["response"].strip():
            dropped["unchanged"] += 1
            continue
        row = _row(pid, c, r, text, chosen, rej_label)
        row.update(corruption=name, corruption_strength=strength, corruption_seed=seed, corruption_source=source,
                   corruption_info=info)
        pairs.append(row)
    summary = {"rule": "corrupt", "control": cfg.control, "generation_sets": labels, "prompts": len(idx[chosen]),
               "pairs": len(pairs), "dropped": dict(dropped), "corruption": name, "strength": strength,
               "chosen": chosen, "source": source, "seed": cfg.seed,
               "model_pairs": dict(Counter(f"{p['chosen_model']} > {p['rejected_model']}" for p in pairs))}
    if strength == 0:
        summary["note"] = "strength 0 is the identity: every pair's sides are equal (the zero-delta control)"
    if dropped["unchanged"]:
        summary["unchanged_note"] = (f"{dropped['unchanged']} response(s) the corruption could not change at "
                                     f"strength {strength:g} (too few sentences, items or words) were dropped")
    return pairs, summary


# ---------------------------------------------------------------------------------------------------------
# `deltalearn audit`: the corruption's own delta, from the pairs' provenance
# ---------------------------------------------------------------------------------------------------------


def corruption_finding(pairs: list[dict]) -> dict | None:
    """What the corruption did, read from the pairs' provenance (None when no pair was made by rule corrupt):
    per corruption and strength, the pairs and the mean of each number in `corruption_info`."""
    rows = [p for p in pairs if p.get("corruption")]
    if not rows:
        return None
    groups: dict[tuple, list[dict]] = {}
    for p in rows:
        groups.setdefault((p["corruption"], p.get("corruption_strength"), p.get("corruption_source"),
                           p.get("control", "none")), []).append(p)
    out = []
    for (name, strength, source, control), ps in groups.items():
        infos = [p.get("corruption_info") or {} for p in ps]
        keys = sorted({k for i in infos for k, v in i.items() if isinstance(v, (int, float))})
        out.append({"corruption": name, "strength": strength, "source": source, "control": control,
                    "pairs": len(ps), "identical": sum(_side(p, "chosen") == _side(p, "rejected") for p in ps),
                    "info_mean": {k: mean(float(i.get(k, 0)) for i in infos) for k in keys}})
    return {"pairs": len(rows), "of": len(pairs), "groups": out}


def _side(p: dict, key: str) -> str:
    v = p.get(key)
    return (v[-1].get("content", "") if isinstance(v, list) and v else str(v or "")).strip()


def corruption_table(f: dict) -> dict:
    """The finding as a report table."""
    rows = [[g["corruption"], f"{g['strength']:g}" if isinstance(g["strength"], (int, float)) else g["strength"],
             g["source"], g["control"], g["pairs"], g["identical"],
             ", ".join(f"{k} {v:.2f}" for k, v in g["info_mean"].items()) or "-"] for g in f["groups"]]
    return {"title": f"Audit 2b. The corruption's delta ({f['pairs']} of {f['of']} pairs made by rule corrupt)",
            "columns": ["corruption", "strength", "corrupted set", "control", "pairs", "sides equal",
                        "mean per pair (the corruption's own measure)"],
            "rows": rows,
            "note": "From each pair's provenance (corruption_info). Strength 0 is the identity: its pairs' sides are "
                    "equal by design (the zero-delta control)."}
