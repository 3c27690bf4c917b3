"""Preference pairs from generations, by a stated rule, with the paper's controls and delta statistics.

Rules (PairConfig.rule):
- `ladder`: model size is the quality proxy (paper Section 4, "Main recipe": chosen = bigger model of a family,
  rejected = next smaller; no judge). Sizes come from `pair.sizes` or the model's parameter count.
  `adjacent: true` pairs neighbouring rungs only; false pairs every bigger > smaller (the paper's 21-set sweep).
- `self_vs_weaker`: the student's own output is chosen, a weaker model's rejected (Section 3, Experiment 2).
- `utility`: mu(x, y) from `deltalearn.utility` decides: per prompt, the highest-utility response is chosen and
  the lowest rejected, kept when the difference is > `min_margin` (Section 3, Experiment 1).
- `judge`: an LLM judge scores every response 1-5 with `JUDGE_RUBRIC`; then as `utility` with the score.
- `columns`: the user names the chosen and rejected generation sets (the reference code's chosen_key/rejected_key).
- `corrupt`: rejected = a corrupted copy of the chosen response (`deltalearn.corrupt_pairs`, issue 32).

Controls (PairConfig.control), the paper's checks that the *direction* of the delta is what teaches:
- `reverse`: every kept pair with chosen and rejected swapped.
- `tie`: pairs of two *different* responses of equal quality (zero delta); each row's orientation is a seeded
  coin flip so there is no systematic side. Per rule:
  ladder -> two generation sets whose stated sizes are equal (e.g. two sampled runs of one model);
  utility/judge -> two responses to the same prompt with equal score;
  columns -> the two named sets are declared equal (like the paper's 3-vs-3-sections tied set);
  self_vs_weaker -> undefined (it is a stated inequality); use columns over two runs of the student.

Filters, each counted in the summary and never silent: prompt missing from one side, empty response, response
cut at max_new_tokens (`drop_truncated`; cutting one side changes the delta), identical chosen and rejected,
delta not above the margin, judge output without a parseable score, no equal-quality partner (tie).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Optional

from deltalearn.io import DataError, read_json, read_table, write_json_atomic
from deltalearn.outputs import MARKER, claim, keep_user_entries, mark
from deltalearn.recipe import ConfigError, PairConfig

Generations = dict[str, list[dict]]
FILTERS = ("missing", "empty", "truncated", "identical", "below_margin", "unscored", "no_tie")


# ---------------------------------------------------------------------------------------------------------
# Reading generations: deltalearn's per-model JSONL folders, long tables, and the paper's "wide" format
# ---------------------------------------------------------------------------------------------------------

_NOT_MODEL_COLUMNS = {"id", "prompt", "messages", "reference", "source", "dataset", "prompt_id"}


def _from_long(rows: list[dict], source: str) -> Generations:
    out: Generations = {}
    for i, r in enumerate(rows, start=1):
        for key in ("id", "prompt", "response"):
            if key not in r:
                raise DataError(source, f"missing '{key}' (row has: {', '.join(r)})", row=i, field=key)
        if not isinstance(r["response"], str):
            raise DataError(source, f"response must be a string, got {type(r['response']).__name__}", row=i,
                            field="response")
        out.setdefault(str(r.get("model") or Path(source).stem), []).append(r)
    return out


def _from_wide(rows: list[dict], source: str, *, models: Optional[list[str]], prompt_column: str,
               id_column: Optional[str]) -> Generations:
    """The reference code's format: one row per prompt, one column per model's response -- a string (with a prompt
    column), or, as the authors released their datasets, a conversation whose messages before the last are the
    prompt (deltalearn.conversations)."""
    from deltalearn.conversations import is_conversation, split_conversation
    from deltalearn.prompts import check_prompt, content_id, missing_column_error

    cols = list(rows[0])
    conversations = [c for c in cols if c not in (prompt_column, id_column) and is_conversation(rows[0][c])]
    if prompt_column not in cols and not conversations:
        raise missing_column_error(source, prompt_column, cols, row=1)
    if models is None:
        models = [c for c in cols if c not in _NOT_MODEL_COLUMNS | {prompt_column, id_column}
                  and (isinstance(rows[0][c], str) or c in conversations)]
        if len(models) < 2:
            raise DataError(source, f"a wide table needs at least two response columns; found {models or 'none'} "
                            f"(columns: {', '.join(cols)})")
    out: Generations = {m: [] for m in models}
    for i, r in enumerate(rows, start=1):
        for m in models:
            if m in r and r[m] is not None and not isinstance(r[m], (str, list, tuple)):
                raise DataError(source, f"response must be a string or a conversation, got {type(r[m]).__name__}",
                                row=i, field=m)
        split = {m: split_conversation(r[m], source=source, row=i, field=m) for m in models
                 if m in r and isinstance(r[m], (list, tuple))}
        if prompt_column in r or not split:
            prompt = check_prompt(r.get(prompt_column), source=source, row=i, field=prompt_column)
        else:
            prompt = next(iter(split.values()))[0]
        pid = str(r[id_column]) if id_column else content_id(prompt)
        for m in models:
            if m not in r:
                raise missing_column_error(source, m, list(r), row=i)
            v = r[m]
            if v is None:  # no response from this model for this prompt: counted as 'missing' when pairing
                continue
            # a conversation carries its own prompt (the messages before the answer), as OpenRLHF reads it
            p, v = split[m] if m in split else (prompt, v)
            extra = {"reference": r["reference"]} if "reference" in r else {}
            out[m].append({"id": pid, "prompt": p, "response": v, "model": m, "truncated": False, **extra})
    return out


def load_generations(paths, *, models: Optional[list[str]] = None, prompt_column: str = "prompt",
                     id_column: Optional[str] = None) -> Generations:
    """{label: rows} from one or more sources:
    - a `deltalearn generate` folder: each <slug>.jsonl is one set, labelled by the model name in its sidecar
      (by the file name for a `--label`ed file, e.g. a second sampled run of the same model);
    - a single generations .jsonl, or any table/dataset with id/prompt/response(/model) columns;
    - a "wide" table or dataset (prompt + one response column per model; `models` picks the columns).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: Generations = {}
    origin: dict[str, str] = {}

    def add(label: str, rows: list[dict], src: str) -> None:
        if label in out:
            raise DataError(src, f"generation set '{label}' also comes from {origin[label]}; give the files "
                            "distinct names")
        out[label], origin[label] = rows, src

    for path in paths:
        p = Path(path)
        if p.is_dir() and list(p.glob("*.jsonl")):
            files = sorted(p.glob("*.jsonl"))
            from deltalearn.generate import meta_path, model_slug, read_generations

            for f in files:
                mp = meta_path(f)
                model = read_json(mp).get("model") if mp.exists() else None
                rows = read_generations(f)
                if rows:
                    # The model's name when the file is its default <slug>.jsonl; else the file's own name
                    # (a --label, e.g. a second sampled run of the same model).
                    add(model if isinstance(model, str) and model_slug(model) == f.stem else f.stem, rows, str(f))
            continue
        rows = read_table(p)
        if not rows:
            raise DataError(p, "no rows")
        if "response" in rows[0]:
            for label, r in _from_long(rows, str(p)).items():
                add(label, r, str(p))
        else:
            for label, r in _from_wide(rows, str(p), models=models, prompt_column=prompt_column,
                                       id_column=id_column).items():
                add(label, r, str(p))
    if models is not None:
        unknown = [m for m in models if m not in out]
        if unknown:
            raise ConfigError(f"models {unknown} not in the generations (have: {', '.join(out)})")
        out = {m: out[m] for m in models}
    return out


# ---------------------------------------------------------------------------------------------------------
# Judge
# ---------------------------------------------------------------------------------------------------------

JUDGE_RUBRIC = """You are grading one answer to a user's request. Rate the answer from 1 to 5:
5 = correct, complete, helpful and clearly written
4 = correct and helpful, with small flaws
3 = partly correct or partly helpful
2 = mostly wrong, off-topic, repetitive or hard to follow
1 = wrong, empty, harmful, or does not address the request

[Request]
{prompt}

[Answer]
{response}

Reply with "Score: N" (N is 1, 2, 3, 4 or 5), then one sentence explaining why."""
"""The judge's rubric (1-5 absolute score, as the paper's GPT-4o quality ratings in Section 5)."""

_SCORE_PATTERNS = [
    re.compile(r"\b(?:score|rating|grade)\s*(?:is|of|=|:)?\s*[:=]?\s*\**\s*([1-5])(?!\d|\.\d)", re.I),
    re.compile(r"\b([1-5])\s*(?:/|out of)\s*5\b", re.I),
    re.compile(r"^\W*([1-5])(?!\d|\.\d)"),
]


def parse_score(text: str) -> Optional[int]:
    """The judge's 1-5 score: 'Score: 4', 'score of 4', '**Rating:** 4', '4/5', '4 out of 5', or a leading digit.
    None when there is none (counted as 'unscored', never guessed)."""
    for pat in _SCORE_PATTERNS:
        m = pat.search(text or "")
        if m:
            return int(m.group(1))
    return None


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def judge_scores(generations: Generations, judge: str, *, out_path=None, backend: str = "transformers",
                 base_url: Optional[str] = None, batch_size: int = 8, max_new_tokens: int = 48,
                 progress: bool = True, rubric: str = JUDGE_RUBRIC) -> dict[tuple[str, str], Optional[int]]:
    """Score every non-empty response 1-5 with an LLM judge (greedy). Returns {(label, prompt id): score or None}.
    Judge outputs go through `generate_responses`, so with `out_path` they are resumable and auditable."""
    from deltalearn.generate import generate_responses

    items = []
    for label, rows in generations.items():
        for r in rows:
            if r["response"].strip():
                items.append({"id": f"{label}\t{r['id']}",
                              "prompt": rubric.format(prompt=_prompt_text(r["prompt"]), response=r["response"])})
    if not items:
        return {}
    outs = generate_responses(judge, items, out_path, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              backend=backend, base_url=base_url, progress=progress)
    return {tuple(o["id"].split("\t", 1)): parse_score(o["response"]) for o in outs}


# ---------------------------------------------------------------------------------------------------------
# Pairing
# ---------------------------------------------------------------------------------------------------------


def _index(generations: Generations) -> dict[str, dict[str, dict]]:
    idx: dict[str, dict[str, dict]] = {}
    for label, rows in generations.items():
        d: dict[str, dict] = {}
        for i, r in enumerate(rows, start=1):
            if "id" not in r or "response" not in r:
                raise DataError(label, "generation row without 'id' or 'response'", row=i)
            if not isinstance(r["response"], str):
                raise DataError(label, f"response must be a string, got {type(r['response']).__name__}", row=i,
                                field="response")
            if r["id"] in d:
                raise DataError(label, f"duplicate id '{r['id']}'", row=i, field="id")
            d[r["id"]] = r
        idx[label] = d
    return idx


def _label(name: Optional[str], labels: list[str], what: str) -> str:
    if name is None:
        raise ConfigError(f"pair.{what} is required for this rule (generation sets: {', '.join(labels)})")
    if name in labels:
        return name
    from deltalearn.generate import model_slug

    by_slug = [lab for lab in labels if model_slug(lab) == model_slug(name)]
    if len(by_slug) == 1:
        return by_slug[0]
    import difflib

    close = difflib.get_close_matches(name, labels, n=1)
    raise ConfigError(f"pair.{what}: '{name}' is not a generation set (have: {', '.join(labels)})"
                      + (f"; did you mean '{close[0]}'?" if close else ""))


def model_sizes(labels: list[str], generations: Generations, stated: dict[str, float]) -> dict[str, float]:
    """Size of each set: stated in pair.sizes (by label or model name), else the model's parameter count."""
    from deltalearn.models import parameter_count

    sizes = {}
    for lab in labels:
        model = (generations[lab][0].get("model") if generations[lab] else None) or lab
        if lab in stated or model in stated:
            sizes[lab] = float(stated.get(lab, stated.get(model)))
            continue
        try:
            sizes[lab] = float(parameter_count(model))
        except Exception as e:  # noqa: BLE001 - any load failure means: the user must state the size
            raise ConfigError(f"pair.sizes: cannot read the size of '{lab}' (model '{model}': {e}); state it, "
                              f"e.g. pair.sizes: {{{lab}: 1.5e9}}") from None
    return sizes


def _fixed_pairs(cfg: PairConfig, labels: list[str], sizes: dict[str, float]) -> list[tuple[str, str]]:
    """(chosen, rejected) set pairs for the rules whose orientation does not depend on the response."""
    if cfg.rule == "ladder":
        if cfg.control == "tie":
            groups: dict[float, list[str]] = {}
            for lab in labels:
                groups.setdefault(sizes[lab], []).append(lab)
            out = [p for g in groups.values() for p in zip(g, g[1:])]
            if not out:
                raise ConfigError("control 'tie' with rule 'ladder' needs two generation sets of equal size (e.g. "
                                  "two sampled runs of one model, with equal pair.sizes); all sizes differ: "
                                  f"{sizes}")
            return out
        ranked = sorted(labels, key=lambda m: -sizes[m])
        for a, b in zip(ranked, ranked[1:]):
            if sizes[a] == sizes[b]:
                raise ConfigError(f"rule 'ladder': '{a}' and '{b}' have the same size {sizes[a]:g}; a ladder needs "
                                  "distinct sizes (state them in pair.sizes), or use control 'tie'")
        if len(ranked) < 2:
            raise ConfigError(f"rule 'ladder' needs at least two generation sets, got {labels}")
        return list(zip(ranked, ranked[1:])) if cfg.adjacent else list(combinations(ranked, 2))
    if cfg.rule == "self_vs_weaker":
        if cfg.control == "tie":
            raise ConfigError("control 'tie' is undefined for rule 'self_vs_weaker' (it states an inequality); use "
                              "rule 'columns' over two runs of the student")
        student = _label(cfg.student, labels, "student")
        others = [lab for lab in labels if lab != student]
        weaker = _label(cfg.weaker, labels, "weaker") if cfg.weaker or len(others) != 1 else others[0]
        return [(student, weaker)]
    if cfg.rule == "columns":
        return [(_label(cfg.chosen, labels, "chosen"), _label(cfg.rejected, labels, "rejected"))]
    raise AssertionError(cfg.rule)


def _bad(row: dict, drop_truncated: bool) -> Optional[str]:
    if not row["response"].strip():
        return "empty"
    if drop_truncated and row.get("truncated"):
        return "truncated"
    return None


def _pair_row(pid: str, prompt, c: dict, r: dict, cm: str, rm: str, rule: str, cs, rs, sizes) -> dict:
    from deltalearn.tokenize import as_messages

    row = {"id": pid, "prompt_id": pid, "prompt": as_messages(prompt),
           "chosen": [{"role": "assistant", "content": c["response"]}],
           "rejected": [{"role": "assistant", "content": r["response"]}],
           "chosen_model": cm, "rejected_model": rm, "rule": rule,
           "chosen_score": None if cs is None else float(cs), "rejected_score": None if rs is None else float(rs),
           "chosen_size": sizes.get(cm), "rejected_size": sizes.get(rm),
           # kept with --keep-truncated: the trainer gives a cut-off response no EOS (deltalearn.tokenize);
           # `deltalearn audit` counts these
           "chosen_truncated": bool(c.get("truncated")), "rejected_truncated": bool(r.get("truncated"))}
    ref = c.get("reference", r.get("reference"))
    if ref is not None:
        row["reference"] = ref
    return row


def tie_swaps(key: Any, seed: int) -> bool:
    """The tie control's coin for one pair: swap its sides or not, from a hash of (seed, key) -- the same for a
    prompt whatever the order or subset of the rows around it (a sequential RNG would reorient every later pair
    when one row is added or dropped)."""
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()[0] & 1 == 1


def apply_control(pairs: list[dict], control: str) -> None:
    """The control in place: `reverse` swaps every chosen/rejected field; each pair records its control."""
    for p in pairs:
        if control == "reverse":
            for k in ("", "_model", "_score", "_size", "_truncated"):
                p["chosen" + k], p["rejected" + k] = p["rejected" + k], p["chosen" + k]
        p["control"] = control


def make_pairs(generations: Generations, cfg: PairConfig, *,
               scores: Optional[dict[tuple[str, str], Optional[float]]] = None) -> tuple[list[dict], dict]:
    """Pairs by `cfg.rule` + `cfg.control`, and a summary counting every filtered candidate.

    scores: for rule 'judge', precomputed {(label, id): 1-5 or None} (from `judge_scores`); computed here with
    `cfg.judge` when omitted.
    """
    if cfg.rule == "corrupt":  # one generation set is enough: its own module (deltalearn.corrupt_pairs)
        from deltalearn.corrupt_pairs import corrupt_pairs

        pairs, summary = corrupt_pairs(generations, cfg)
        apply_control(pairs, cfg.control)
        return pairs, summary
    labels = list(generations)
    if len(labels) < 2:
        raise ConfigError(f"pairing needs at least two generation sets, got {labels}")
    idx = _index(generations)
    order: list[str] = []
    seen = set()
    for lab in labels:
        for pid in idx[lab]:
            if pid not in seen:
                seen.add(pid)
                order.append(pid)
    dropped = Counter({k: 0 for k in FILTERS})
    excluded = Counter()
    pairs: list[dict] = []
    sizes = {k: float(v) for k, v in cfg.sizes.items()}

    if cfg.rule in ("ladder", "self_vs_weaker", "columns"):
        if cfg.rule == "ladder":
            sizes = model_sizes(labels, generations, cfg.sizes)
        set_pairs = _fixed_pairs(cfg, labels, sizes)
        composite = len(set_pairs) > 1
        for pid in order:
            for cm, rm in set_pairs:
                c, r = idx[cm].get(pid), idx[rm].get(pid)
                if c is None or r is None:
                    dropped["missing"] += 1
                    continue
                why = _bad(c, cfg.drop_truncated) or _bad(r, cfg.drop_truncated)
                if why is None and c["response"].strip() == r["response"].strip():
                    why = "identical"
                if why:
                    dropped[why] += 1
                    continue
                if cfg.control == "tie" and tie_swaps(f"{pid}:{cm}>{rm}" if composite else pid, cfg.seed):
                    c, r, cm_, rm_ = r, c, rm, cm
                else:
                    cm_, rm_ = cm, rm
                row = _pair_row(pid, c["prompt"], c, r, cm_, rm_, cfg.rule, None, None, sizes)
                if composite:
                    row["id"] = f"{pid}:{cm}>{rm}"
                pairs.append(row)
    elif cfg.rule in ("utility", "judge"):
        if cfg.rule == "utility":
            from deltalearn.utility import get_utility

            if not cfg.utility:
                raise ConfigError("rule 'utility' needs pair.utility (e.g. bold_sections, exact_answer)")
            mu = get_utility(cfg.utility)

            def score(lab: str, row: dict):
                try:
                    return mu(row["response"], row.get("reference"))
                except ValueError as e:
                    raise DataError(lab, f"utility '{cfg.utility}': {e}", field="reference") from None
        else:
            if scores is None:
                if not cfg.judge:
                    raise ConfigError("rule 'judge' needs pair.judge (a model name, or the server's model with "
                                      "pair.judge_base_url)")
                scores = judge_scores(generations, cfg.judge, backend="openai" if cfg.judge_base_url else
                                      "transformers", base_url=cfg.judge_base_url)

            def score(lab: str, row: dict):
                return scores.get((lab, row["id"]))
        for pid in order:
            present = [(lab, idx[lab][pid]) for lab in labels if pid in idx[lab]]
            if len(present) < 2:
                dropped["missing"] += 1
                continue
            valid = []
            for lab, row in present:
                why = _bad(row, cfg.drop_truncated)
                if why:
                    excluded[why] += 1
                    continue
                s = score(lab, row)
                if s is None:
                    excluded["unscored"] += 1
                    continue
                valid.append((lab, row, float(s)))
            if len(valid) < 2:
                # the prompt is lost because its responses were filtered: count it under the first reason
                reasons = [_bad(row, cfg.drop_truncated) or "unscored" for _, row in present]
                dropped[next(r for r in ("empty", "truncated", "unscored") if r in reasons)] += 1
                continue
            if cfg.control == "tie":
                match = next(((a, b) for a, b in combinations(valid, 2)
                              if a[2] == b[2] and a[1]["response"].strip() != b[1]["response"].strip()), None)
                if match is None:
                    dropped["no_tie"] += 1
                    continue
                a, b = match[::-1] if tie_swaps(pid, cfg.seed) else match
            else:
                a = max(valid, key=lambda v: v[2])  # first best / first worst in set order: deterministic
                b = min(valid, key=lambda v: v[2])
                if a[2] - b[2] <= cfg.min_margin:
                    dropped["below_margin"] += 1
                    continue
                if a[1]["response"].strip() == b[1]["response"].strip():
                    dropped["identical"] += 1
                    continue
            pairs.append(_pair_row(pid, a[1]["prompt"], a[1], b[1], a[0], b[0], cfg.rule, a[2], b[2], sizes))
    else:
        raise ConfigError(f"unknown pair.rule '{cfg.rule}'")

    apply_control(pairs, cfg.control)
    summary = {"rule": cfg.rule, "control": cfg.control, "generation_sets": labels, "prompts": len(order),
               "pairs": len(pairs), "dropped": dict(dropped), "responses_excluded": dict(excluded),
               "model_pairs": dict(Counter(f"{p['chosen_model']} > {p['rejected_model']}" for p in pairs))}
    if sizes:
        summary["sizes"] = sizes
    return pairs, summary


# ---------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------


def save_pairs(pairs: list[dict], out_dir, *, summary: Optional[dict] = None, export: tuple[str, ...] = ()) -> Path:
    """Save as an HF dataset (save_to_disk) atomically: written to a temporary folder, then renamed into place,
    so a killed run never leaves a half-written dataset under the final name. `export` adds
    out_dir/pairs.jsonl / pairs.parquet inside it."""
    if not pairs:
        raise DataError(out_dir, f"no pairs to save (summary: {json.dumps(summary)})")
    from deltalearn.locks import artifact_lock

    with artifact_lock(out_dir, what="pairs folder"):
        _recover_aside(Path(out_dir))
        claim(out_dir, "pairs")  # a user's folder, a run folder, another artifact: refused, nothing touched
        return _save_pairs(pairs, Path(out_dir), summary=summary, export=export)


def _pairs_own(name: str) -> bool:
    """Files a pairs folder's writer puts there; anything else in it is the user's and is carried over."""
    return name in ("state.json", "dataset_info.json", "pair_summary.json", "pairs.jsonl", "pairs.parquet",
                    "delta_stats.json", MARKER) or (name.startswith("data-") and name.endswith(".arrow"))


def _recover_aside(out: Path) -> None:
    """A save killed between setting the old dataset aside and finishing leaves `.NAME.old`: put it back (or its
    user files into the new one) instead of deleting it."""
    old = out.with_name(f".{out.name}.old")
    if not old.is_dir():
        return
    if not out.exists():
        os.replace(old, out)
        return
    keep_user_entries(old, out, _pairs_own)
    shutil.rmtree(old)


def _save_pairs(pairs: list[dict], out: Path, *, summary: Optional[dict], export: tuple[str, ...]) -> Path:
    import datasets

    out.parent.mkdir(parents=True, exist_ok=True)
    # Fixed temporary names are safe: the caller holds the folder's lock (one writer), and a killed run's leftovers
    # are cleared here instead of piling up.
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    ds = datasets.Dataset.from_list(pairs)
    try:
        ds.save_to_disk(str(tmp))
        if summary is not None:
            write_json_atomic(tmp / "pair_summary.json", summary)
        from deltalearn.cards import write_dataset_card

        write_dataset_card(tmp, pairs, summary)
        # Exports go inside the folder (pairs.jsonl / pairs.parquet), so the folder is the whole artifact.
        for fmt in export:
            if fmt == "jsonl":
                from deltalearn.io import write_jsonl_atomic

                write_jsonl_atomic(tmp / "pairs.jsonl", pairs)
            elif fmt == "parquet":
                ds.to_parquet(str(tmp / "pairs.parquet"))
            else:
                raise ConfigError(f"unknown export format '{fmt}' (jsonl, parquet)")
    except (OSError, DataError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            from deltalearn.io import write_failed

            raise write_failed(out, e) from None
        raise
    mark(tmp, "pairs")
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    keep_user_entries(old, out, _pairs_own)  # the user's files in the old folder move into the new one
    if old.exists():
        shutil.rmtree(old)
    return out


# ---------------------------------------------------------------------------------------------------------
# Delta statistics
# ---------------------------------------------------------------------------------------------------------


def pair_qualities(pairs: list[dict], *, utility: Optional[str | Callable] = None,
                   scores: Optional[dict[tuple[str, str], Optional[float]]] = None,
                   source: Optional[str] = None) -> tuple[str, list[Optional[tuple[float, float]]]]:
    """(quality name, [(chosen, rejected) quality or None per pair]), the per-pair form behind `delta_stats`.

    Quality from `utility` (a name in deltalearn.utility or a callable (response, reference)), else judge `scores`
    {(set label, prompt id): score}, else the pairs' own chosen/rejected scores. A utility that does not apply to
    the data (exact_answer without a reference) is a DataError naming the utility, the row and the field."""
    from deltalearn.tokenize import as_response_text

    if isinstance(utility, str):
        from deltalearn.utility import get_utility

        name, fn = utility, get_utility(utility)
    elif callable(utility):
        name, fn = getattr(utility, "__name__", "utility"), utility
    else:
        name, fn = ("judge" if scores is not None else "pair scores"), None
    out: list[Optional[tuple[float, float]]] = []
    for i, p in enumerate(pairs, start=1):
        pid = p.get("prompt_id", p.get("id"))
        if fn is not None:
            try:
                c = fn(as_response_text(p["chosen"]), p.get("reference"))
                r = fn(as_response_text(p["rejected"]), p.get("reference"))
            except ValueError as e:
                raise DataError(source, f"utility '{name}' does not apply to these pairs: {e}", row=i,
                                field="reference") from None
        elif scores is not None:
            c, r = scores.get((p.get("chosen_model"), pid)), scores.get((p.get("rejected_model"), pid))
        else:
            c, r = p.get("chosen_score"), p.get("rejected_score")
        out.append(None if c is None or r is None else (float(c), float(r)))
    return name, out


def delta_stats(pairs: list[dict], *, utility: Optional[str | Callable] = None,
                scores: Optional[dict[tuple[str, str], Optional[float]]] = None,
                sizes: Optional[dict[str, float]] = None) -> dict:
    """How big and how reliable the delta is (paper Section 5, "Analysis").

    Quality per response as in `pair_qualities`. Returns mean chosen/rejected quality, mean delta with a 95% CI
    (normal approx., 1.96 s.e.), the fraction of pairs with positive/zero/negative delta, and the agreement of the
    size heuristic with the quality labels: among pairs whose models differ in size, how often the bigger model's
    response scores strictly higher (the paper reports 80.5% size-vs-GPT-4o).
    """
    from deltalearn.stats import mean_se

    name, quals = pair_qualities(pairs, utility=utility, scores=scores)
    cs, rs, deltas, agree, ties_sized, n_sized, unscored = [], [], [], 0, 0, 0, 0
    for p, q in zip(pairs, quals):
        if q is None:
            unscored += 1
            continue
        c, r = q
        cs.append(c)
        rs.append(r)
        deltas.append(c - r)
        size_c = (p.get("chosen_size") if p.get("chosen_size") is not None
                  else (sizes or {}).get(p.get("chosen_model")))
        size_r = (p.get("rejected_size") if p.get("rejected_size") is not None
                  else (sizes or {}).get(p.get("rejected_model")))
        if size_c is not None and size_r is not None and size_c != size_r:
            n_sized += 1
            big, small = (c, r) if size_c > size_r else (r, c)
            agree += big > small
            ties_sized += big == small
    n = len(deltas)
    if n == 0:
        return {"quality": name, "pairs": len(pairs), "scored": 0, "unscored": unscored}
    md, se = mean_se(deltas)
    out = {
        "quality": name, "pairs": len(pairs), "scored": n, "unscored": unscored,
        "chosen_mean": mean_se(cs)[0], "rejected_mean": mean_se(rs)[0],
        "delta_mean": md, "delta_se": se, "delta_ci95": [md - 1.96 * se, md + 1.96 * se],
        "positive": sum(d > 0 for d in deltas) / n, "zero": sum(d == 0 for d in deltas) / n,
        "negative": sum(d < 0 for d in deltas) / n,
    }
    if n_sized:
        out.update({"size_pairs": n_sized, "size_agreement": agree / n_sized, "size_ties": ties_sized / n_sized,
                    "size_agreement_excl_ties": agree / (n_sized - ties_sized) if n_sized > ties_sized else None})
    return out


def format_stats(s: dict) -> str:
    if not s.get("scored"):
        return f"delta statistics ({s['quality']}): no scored pairs ({s['unscored']} unscored)"
    lo, hi = s["delta_ci95"]
    lines = [
        f"delta statistics: {s['scored']} pairs scored by {s['quality']}"
        + (f" ({s['unscored']} unscored)" if s["unscored"] else ""),
        f"  chosen   mean {s['chosen_mean']:.3f}",
        f"  rejected mean {s['rejected_mean']:.3f}",
        f"  delta    mean {s['delta_mean']:.3f}  95% CI [{lo:.3f}, {hi:.3f}]",
        f"  delta > 0: {s['positive']:.1%}   = 0: {s['zero']:.1%}   < 0: {s['negative']:.1%}",
    ]
    if "size_agreement" in s:
        excl = s["size_agreement_excl_ties"]
        lines.append(f"  size heuristic agrees (bigger model scores higher): {s['size_agreement']:.1%} of "
                     f"{s['size_pairs']} pairs; ties {s['size_ties']:.1%}"
                     + (f"; {excl:.1%} excluding ties" if excl is not None else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# CLI: deltalearn pair
# ---------------------------------------------------------------------------------------------------------


def _parse_sizes(items: list[str]) -> dict[str, float]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--sizes takes NAME=SIZE items (e.g. smollm2-135m=135e6), got '{it}'")
        k, v = it.rsplit("=", 1)
        try:
            out[k] = float(v)
        except ValueError:
            raise ConfigError(f"--sizes {it}: '{v}' is not a number") from None
    return out


def _parse_kv(items: list[str], flag: str) -> dict[str, str]:
    bad = [it for it in items or [] if "=" not in it]
    if bad:
        raise ConfigError(f"{flag} takes KEY=VALUE items (e.g. wrong_values=wrong.json), got '{bad[0]}'")
    return dict(it.split("=", 1) for it in items or [])


def add_cli_args(p) -> None:
    p.add_argument("--generations", nargs="+", required=True,
                   help="generation folders/files from `deltalearn generate`, or a wide table/dataset")
    p.add_argument("--models", nargs="*", default=None,
                   help="use only these generation sets / wide columns (default: all)")
    p.add_argument("--prompt-column", default="prompt", help="wide tables: the prompt column")
    p.add_argument("--id-column", default=None, help="wide tables: a stable id column (default: content hash)")
    p.add_argument("--rule", choices=["ladder", "self_vs_weaker", "utility", "judge", "columns", "corrupt"],
                   default="ladder",
                   help="how chosen and rejected are picked (see the README's pairing rules)")
    p.add_argument("--sizes", nargs="*", default=[], metavar="NAME=SIZE", help="ladder: state model sizes")
    p.add_argument("--all-pairs", action="store_true", help="ladder: every bigger>smaller, not just adjacent rungs")
    p.add_argument("--student", help="self_vs_weaker: the student's generation set")
    p.add_argument("--weaker", help="self_vs_weaker: the weaker generation set")
    p.add_argument("--utility", help="utility rule: bold_sections, exact_answer, response_words, ...")
    p.add_argument("--min-margin", type=float, default=0.0,
                   help="utility/judge rules: keep a pair only if score(chosen) - score(rejected) > this")
    p.add_argument("--judge", help="judge rule: the judge model (or the server's model with --judge-base-url)")
    p.add_argument("--judge-base-url", help="judge through an OpenAI-compatible server")
    p.add_argument("--chosen", help="columns rule: chosen set")
    p.add_argument("--rejected", help="columns rule: rejected set")
    p.add_argument("--control", choices=["none", "reverse", "tie"], default="none",
                   help="paper controls: reverse swaps chosen and rejected; tie pairs two equally good responses")
    p.add_argument("--keep-truncated", action="store_true", help="keep pairs where a response hit max_new_tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the tie control's orientation; corrupt: hashed "
                   "with each prompt id")
    p.add_argument("--corruption", help="corrupt rule: wrong_items, student_wrong_items, drop_sentence, "
                   "shuffle_sentences, truncate, or module:function")
    p.add_argument("--strength", type=float, default=1.0, help="corrupt rule: how much to break (0: identity)")
    p.add_argument("--corruption-arg", dest="corruption_args", action="append", default=[], metavar="KEY=VALUE",
                   help="corrupt rule: an input of the corruption, e.g. wrong_values=FILE.json (repeatable)")
    p.add_argument("--out", help="output folder (HF dataset); omit to only print the summary/stats")
    p.add_argument("--export", nargs="*", default=[], choices=["jsonl", "parquet"],
                   help="also write OUT/pairs.jsonl and/or OUT/pairs.parquet inside the output folder")
    p.add_argument("--stats", action="store_true", help="print delta statistics (and add them to the dataset card)")
    p.add_argument("--push-to-hub", metavar="REPO",
                   help="upload the --out folder (with its dataset card) to this Hub dataset repository; checked "
                        "before any work (logged in, Hub reachable)")
    p.add_argument("--stats-utility", help="utility for --stats (default: the rule's utility)")
    p.add_argument("--stats-judge", help="judge model for --stats (default: the rule's judge)")
    from deltalearn.cliargs import add_no_progress

    add_no_progress(p)


def run_cli(args) -> int:
    import contextlib

    from deltalearn.locks import artifact_lock

    if args.push_to_hub:  # before the output folder is claimed: a refusal leaves nothing behind
        from deltalearn import hub

        if not args.out:
            raise ConfigError("--push-to-hub needs --out (the folder that is uploaded)")
        hub.check_push(args.push_to_hub)
    # One writer per pairs folder: refused before the (possibly long) judge pass, not after it.
    try:
        with artifact_lock(args.out, what="pairs folder") if args.out else contextlib.nullcontext():
            if args.out:
                claim(args.out, "pairs")
            return _run_cli(args)
    except ConfigError as e:  # the user typed flags, not recipe keys: pair.rejected -> --rejected
        raise ConfigError(re.sub(r"\bpair\.([a-z_]+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e))) from None


def _run_cli(args) -> int:
    from deltalearn.generate import model_slug

    cfg = PairConfig(rule=args.rule, chosen=args.chosen, rejected=args.rejected, sizes=_parse_sizes(args.sizes),
                     adjacent=not args.all_pairs, student=args.student, weaker=args.weaker, utility=args.utility,
                     min_margin=args.min_margin, judge=args.judge, judge_base_url=args.judge_base_url,
                     control=args.control, drop_truncated=not args.keep_truncated, seed=args.seed,
                     corruption=args.corruption, strength=args.strength,
                     corruption_args=_parse_kv(args.corruption_args, "--corruption-arg"))
    gens = load_generations(args.generations, models=args.models, prompt_column=args.prompt_column,
                            id_column=args.id_column)
    scores = None
    judge = args.judge if args.rule == "judge" else args.stats_judge
    if judge:
        out_judge = (Path(args.out).with_name(Path(args.out).name + "-judge") / f"{model_slug(judge)}.jsonl"
                     if args.out else None)
        if out_judge is not None:
            claim(out_judge.parent, "generations")
        scores = judge_scores(gens, judge, out_path=out_judge, backend="openai" if args.judge_base_url else
                              "transformers", base_url=args.judge_base_url, progress=not args.no_progress)
    pairs, summary = make_pairs(gens, cfg, scores=scores if args.rule == "judge" else None)
    print(json.dumps(summary, indent=2))
    if args.out:
        if not pairs:
            raise DataError(args.out, "no pairs survived the filters; nothing saved (see the summary above)")
        save_pairs(pairs, args.out, summary=summary, export=tuple(args.export))
        exported = "".join(f", {Path(args.out) / ('pairs.' + fmt)}" for fmt in args.export)
        print(f"saved {len(pairs)} pairs to {args.out}{exported}", file=sys.stderr)
    if args.stats:
        util = args.stats_utility or (args.utility if args.rule == "utility" else None)
        sizes = None
        if any(p.get("chosen_size") is None for p in pairs):
            try:
                sizes = model_sizes(list(gens), gens, cfg.sizes)
            except ConfigError as e:
                print(f"(no size agreement: {e})", file=sys.stderr)
        stats = delta_stats(pairs, utility=util, scores=None if util else scores, sizes=sizes)
        print(format_stats(stats))
        if args.out:
            from deltalearn.cards import write_dataset_card

            write_json_atomic(Path(args.out) / "delta_stats.json", stats)
            write_dataset_card(args.out, pairs, summary, stats)
    if args.push_to_hub:
        from deltalearn import hub

        url = hub.push_folder(args.out, args.push_to_hub, repo_type="dataset")
        print(f"pushed {args.out} to {url}", file=sys.stderr)
    return 0
