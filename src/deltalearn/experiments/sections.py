"""Experiment 1 of the paper, the stylistic delta: the number of bold section headers (and `deltalearn demo`).

The paper (Section 3; paper-notes "Experiment 1") gives the student pairs whose chosen answer has k_c bold sections
and whose rejected answer has k_r < k_c, both *below* the student's own habit, and finds that DPO pushes the count
far past k_c while SFT on the chosen answers pulls it down towards k_c; reversed pairs push it down, tied pairs do
nothing. Here the same experiment runs end to end on the embedded SmolLM2-135M-Instruct:

1. Prompts: `data/sections_prompts.jsonl`, 312 open-ended instructions (how-to, compare, explain, plan; 78 each)
   written for this project by its engineers, not taken from any dataset. Each row carries a fixed `split`: in
   every category the 20 prompts with the smallest sha256 of their text are `eval` (80), the rest `train` (232).
   tests/test_sections.py checks there is no overlap and no near-duplicate (content-word Jaccard < 0.6).
2. y_k: the model's greedy answer to each train prompt, rewritten by `with_k_sections` with exactly k header lines
   (rule in its docstring; bold_sections(y_k) == k is asserted). Columns are named like the paper's released data:
   `3_sections`; `3_sections_alt` is a second 3-section text of the same answer (its sections start half a share
   earlier, so other words become headers; the same title rule) for the tied control (`control: tie`: each pair's
   sides drawn by a seeded coin), as two identical texts give no gradient at all; `3_sections_other` is y_3 of a
   second answer to the prompt (the same model sampled at `experiment.other_temperature`), a tie of two different
   answers. A prompt set that already has such columns (the paper's released data) is used as is.
3. The student's habit. The paper's k_c = 3 and k_r = 2 are both *below* the student's habit (Llama-3.2-3B: 5.9).
   SmolLM2-135M almost never writes a standalone bold header line (shared/sections-notes.md: 0.09 per answer), and
   a system prompt asking for them does not change that (measured: 0 of 8 answers; with a 5-section example in
   the system prompt, 1 of 8). So `experiment.habit_k` adds a habit stage: SFT of the model on y_{habit_k} of its own
   answers; the result is "the student" of every arm, and the base row measures its habit (`eval_original` also
   evaluates the model before it). Without habit_k the student is `train.model` (+ `generate.system_prompt`).
4. Arms (recipe `arms`): each picks its columns with `pair: {chosen: 3_sections, rejected: 2_sections}` and its loss
   with `train: {loss: ...}` (SFT uses only the chosen side); `pair.control: reverse` swaps the sides, `tie` swaps
   them per pair by a seeded coin (`pair.seed`). Every arm
   starts from the same student and sees the same prompts for the same number of steps.
5. Eval: greedy answers on the held-out prompts at a fixed `eval.max_new_tokens`: mean bold sections +/- s.e., the
   paired difference against base on the same prompts, distinct headers (repetition loops), bold spans ("emit **
   everywhere", which a header count scores as a decrease) and length in tokens and words (so "more sections" is
   not just "longer"). One `eval/<arm>.json` per run.
6. `results.json` (table + bar chart `sections.png`), `manifest.json`, and the Markdown table on stdout.

Experiment-specific keys (the recipe's `experiment:` mapping): `train_prompts`, `eval_prompts`, `habit_k`,
`habit_prompts`, `habit_train`, `eval_original`, `eval_split`, `other_temperature` -- see `SectionsSettings`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from deltalearn.io import DataError, read_json, write_json_atomic, write_jsonl_atomic
from deltalearn.manifest import input_hash, update_manifest
from deltalearn.pairs import tie_swaps
from deltalearn.recipe import ConfigError, Recipe, arm_configs, load_recipe, to_dict
from deltalearn.stats import fmt_pm, mean_se, paired_diff
from deltalearn.utility import bold_sections, bold_spans, distinct_headers, response_words

DEFAULT_PROMPTS = "builtin:sections_prompts"
COLUMN = re.compile(r"^(?P<k>\d+)_sections(?P<alt>_alt|_other)?$")
METRICS = ("bold_sections", "headers_per_100_words", "distinct_headers", "bold_spans", "response_words",
           "response_tokens")
MAX_K = 50


# ---------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SectionsSettings:
    train_prompts: Optional[int] = None
    """How many train-split prompts to build pairs from (default: all 232 of the built-in set)."""
    eval_prompts: Optional[int] = None
    """How many held-out prompts to evaluate on (default: all 80 of the built-in set)."""
    habit_k: Optional[int] = None
    """Give the student a habit first: SFT `train.model` on y_{habit_k} (built from its own answers to the train
    prompts) and use that model as the student of every arm. Needed for SmolLM2, whose habit is ~0 sections."""
    habit_prompts: Optional[int] = None
    """With a habit stage: train it on this many train-split prompts that no arm trains on (the next ones after the
    arms' `train_prompts` in the split's seeded order), so the habit is the student's own on new prompts, not a
    memory of the arms' data. Unset: the habit trains on the arms' prompts."""
    habit_train: dict = field(default_factory=dict)
    """Overrides of the recipe's `train` section for the habit stage (its loss is always sft), e.g. {lr: 3e-5}."""
    eval_original: bool = False
    """With a habit stage: also evaluate `train.model` before it (one more eval pass)."""
    eval_split: str = "eval"
    """`eval`: the held-out split (report numbers). `dev`: the tail of the train split, never trained on, for
    choosing learning rates and steps without looking at the held-out prompts."""
    other_temperature: float = 0.7
    """Sampling temperature of the second answer behind `K_sections_other` columns (the same model, the same
    prompt, seed generate.seed + 1): a tie of two different answers instead of two cuts of one."""


def column_k(name: str, where: str = "pair") -> tuple[int, int]:
    """`3_sections` -> (3, 0); `3_sections_alt` -> (3, 1) (the variant passed to `with_k_sections`);
    `3_sections_other` -> (3, 0), cut from the second answer (`is_other`)."""
    m = COLUMN.match(str(name))
    if not m:
        raise ConfigError(f"{where}: '{name}' is not a sections column; use K_sections, K_sections_alt or "
                          f"K_sections_other (e.g. 3_sections), K from 1 to {MAX_K}")
    k = int(m.group("k"))
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"{where}: k={k} in '{name}' must be between 1 and {MAX_K}")
    return k, 1 if m.group("alt") == "_alt" else 0


def is_other(name: str) -> bool:
    """A column cut from the second, sampled answer to the prompt (`K_sections_other`)."""
    return str(name).endswith("_sections_other")


def settings_from(recipe: Recipe) -> SectionsSettings:
    """Check everything the sections experiment needs from a recipe, before any work starts."""
    if recipe.kind != "sections":
        raise ConfigError(f"kind: the sections experiment runs recipes with kind: sections, got {recipe.kind!r}")
    if not recipe.train.model:
        raise ConfigError("train.model: name the student model (e.g. smollm2-135m)")
    known = {"train_prompts", "eval_prompts", "habit_k", "habit_prompts", "habit_train", "eval_original", "eval_split",
             "other_temperature"}
    for key, value in recipe.experiment.items():
        if key not in known:
            import difflib

            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise ConfigError(f"unknown key 'experiment.{key}'" + (f"; did you mean '{close[0]}'?" if close else
                                                                    f"; known keys: {', '.join(sorted(known))}"))
        if key == "habit_train":
            if not isinstance(value, dict):
                raise ConfigError(f"experiment.habit_train: expected a mapping of train keys, got {value!r}")
        elif key == "other_temperature":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"experiment.other_temperature: expected a number > 0 (a sampled answer), got "
                                  f"{value!r}")
        elif key == "eval_split":
            if value not in ("eval", "dev"):
                raise ConfigError(f"experiment.eval_split: expected 'eval' (held-out) or 'dev' (unused train "
                                  f"prompts, for choosing settings), got {value!r}")
        elif key == "eval_original":
            if not isinstance(value, bool):
                raise ConfigError(f"experiment.eval_original: expected true or false, got {value!r}")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1
                                    or (key == "habit_k" and value > MAX_K)):
            raise ConfigError(f"experiment.{key}: expected a whole number >= 1{f' and <= {MAX_K}' if key == 'habit_k' else ''}"
                              f" (or null), got {value!r}")
    settings = SectionsSettings(**recipe.experiment)
    if settings.habit_prompts is not None and settings.habit_k is None:
        raise ConfigError("experiment.habit_prompts is set but experiment.habit_k is not: name the habit's k (e.g. 6)")
    if settings.habit_train and settings.habit_k is None:
        raise ConfigError("experiment.habit_train is set but experiment.habit_k is not: name the habit's k (e.g. 6)")
    if settings.habit_k is not None:
        habit_config(recipe, settings)  # validates the habit stage's train section
    if recipe.generate.models and list(recipe.generate.models) != [recipe.train.model]:
        raise ConfigError("generate.models: the sections experiment builds its data from the student's own answers "
                          f"(train.model = {recipe.train.model}); leave generate.models empty")
    if recipe.generate.temperature != 0:
        raise ConfigError("generate.temperature: y_k are built from greedy answers (the paper's setting); use 0")
    if recipe.eval.system_prompt is not None and recipe.eval.system_prompt != recipe.generate.system_prompt:
        raise ConfigError("eval.system_prompt differs from generate.system_prompt: the student is the model plus "
                          "its system prompt, so data and eval must use the same one (leave eval.system_prompt "
                          "empty to reuse generate's)")
    if not recipe.arms:
        raise ConfigError("arms: list at least one trained arm (e.g. {name: dpo-3-over-2, pair: {chosen: "
                          "3_sections, rejected: 2_sections}}); the base model is always evaluated")
    for arm in recipe.arms:
        if arm.name == "base" or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", arm.name):
            raise ConfigError(f"arms: '{arm.name}' must be a folder-safe name (letters, digits, . _ -) other than "
                              "'base'")
        pair, train = arm_configs(recipe, arm)
        where = f"arms[{arm.name}].pair"
        if pair.rule != "columns":
            raise ConfigError(f"{where}.rule: the sections experiment pairs its own y_k columns; use rule: columns")
        if pair.control not in ("none", "reverse", "tie"):
            raise ConfigError(f"{where}.control: use none, reverse or tie")
        if pair.chosen is None:
            raise ConfigError(f"{where}.chosen: name the chosen column, e.g. 3_sections")
        column_k(pair.chosen, f"{where}.chosen")
        if train.loss == "sft":
            if pair.control != "none":
                raise ConfigError(f"{where}.control: {pair.control} has no meaning for SFT (it trains on chosen "
                                  "only)")
        else:
            if pair.rejected is None:
                raise ConfigError(f"{where}.rejected: loss {train.loss} needs a rejected column, e.g. 2_sections")
            column_k(pair.rejected, f"{where}.rejected")
            if pair.rejected == pair.chosen:
                raise ConfigError(f"{where}: chosen and rejected are both '{pair.chosen}': identical texts give zero "
                                  "gradient; for a tie use 3_sections vs 3_sections_alt with control: tie")
            same_k = column_k(pair.chosen)[0] == column_k(pair.rejected)[0]
            if pair.control == "tie" and not same_k:
                raise ConfigError(f"{where}.control: tie needs two columns of the same k (e.g. 3_sections vs "
                                  f"3_sections_alt), got {pair.chosen} vs {pair.rejected}")
            if same_k and pair.control != "tie":
                # Measured: with variant 0 always chosen, the full form's "tie" learned the variants' systematic
                # difference (+3.00 +/- 0.70 on held-out, header loops). A tie has no systematic side: each pair's
                # orientation is a seeded coin.
                raise ConfigError(f"{where}: {pair.chosen} vs {pair.rejected} have the same k; add control: tie "
                                  "(each pair's sides drawn by a seeded coin), since a fixed orientation prefers "
                                  "one variant's section boundaries over the other's")
    return settings


def habit_config(recipe: Recipe, settings: SectionsSettings):
    """The habit stage's TrainConfig: the recipe's train section, habit_train on top, loss sft."""
    from deltalearn.recipe import TrainConfig, from_dict, resolve_train

    data = {**to_dict(recipe.train), **settings.habit_train, "loss": "sft", "beta": None}
    return resolve_train(from_dict(TrainConfig, data, "experiment.habit_train"), "experiment.habit_train")


def needed_columns(recipe: Recipe, settings: Optional[SectionsSettings] = None) -> list[str]:
    cols = set()
    if settings is not None and settings.habit_k is not None:
        cols.add(f"{settings.habit_k}_sections")
    for arm in recipe.arms:
        pair, train = arm_configs(recipe, arm)
        cols.add(pair.chosen)
        if train.loss != "sft":
            cols.add(pair.rejected)
    return sorted(cols, key=lambda c: (*column_k(c), is_other(c)))


# ---------------------------------------------------------------------------------------------------------
# y_k: the model's own answer rewritten with exactly k bold section headers
# ---------------------------------------------------------------------------------------------------------

# A sentence ends at . ! ? (not after a digit: "1. " starts a list item) before whitespace.
_SENTENCE_END = re.compile(r"(?<=[^\d\s][.!?])[\"')\]]*\s+(?=\S)")
_LAST_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’-]*")
_LEADING_MARKUP = re.compile(r"^\s*(?:#{1,6}\s+|(?:[-*+]|\d+[.)])\s+)?")
_TITLE_STOP = frozenset(
    "a an the and or but of to for in on at by with from into as is are be it its this that these those "
    "you your i we our they their he she his her can will would should could may might do does not no so if "
    "then than there here when what which who how why also just very".split())


def _is_header(line: str) -> bool:
    return bold_sections(line) > 0


def _body(text: str, truncated: bool) -> str:
    """The answer with its own header lines removed, cut back to its last full sentence when it hit the token cap
    (a cut-off last sentence would teach stopping mid-sentence, and may hold an unclosed `**`)."""
    lines = [ln.rstrip() for ln in (text or "").splitlines() if not _is_header(ln)]
    body = "\n".join(lines).strip()
    if truncated:
        ends = list(_LAST_SENTENCE_END.finditer(body))
        if ends and ends[-1].end() >= len(body) // 3:  # cut only when most of the answer stays
            body = body[: ends[-1].end()]
    return re.sub(r"\n{3,}", "\n\n", body).strip()


def _sentence_units(units: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every unit split at its sentence ends (the separator of a unit's first sentence is kept)."""
    finer = []
    for sep, line in units:
        for j, sent in enumerate(_SENTENCE_END.split(line)):
            if sent.strip():
                finer.append((sep if j == 0 else " ", sent.strip() if j else sent))
    return finer


def _word_units(units: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every unit split into its words (the separator of a unit's first word is kept); the words of a bold span
    stay one unit, so no cut opens a `**` it does not close."""
    finer = []
    for sep, line in units:
        words: list[str] = []
        for w in line.split():
            if words and words[-1].count("**") % 2:
                words[-1] += " " + w
            else:
                words.append(w)
        finer.extend((sep if j == 0 else " ", w) for j, w in enumerate(words))
    return finer


def _units(body: str, k: int) -> list[tuple[str, str]]:
    """The body as (separator-before, text) units: lines; sentences when there are fewer than k lines; and halves of
    the longest unit, split at a word boundary, while there are still fewer than k."""
    units: list[tuple[str, str]] = []
    sep = ""
    for line in body.split("\n"):
        if not line.strip():
            sep = "\n\n"
            continue
        units.append((sep or "\n", line))
        sep = ""
    if len(units) < k:
        units = _sentence_units(units)
    while len(units) < k:
        i = max(range(len(units)), key=lambda j: len(units[j][1].split()))
        words = units[i][1].split()
        if len(words) < 2:
            break
        half = len(words) // 2
        units[i:i + 1] = [(units[i][0], " ".join(words[:half])), (" ", " ".join(words[half:]))]
    return units


def _boundaries(lengths: list[int], k: int, variant: int) -> list[int]:
    """Unit indices where chunks 2..k start: those whose cumulative word count is closest to the targets.
    variant 0 aims at equal shares (i * W / k); variant 1 moves every boundary back by half a share
    ((i - 1/2) * W / k), so the two texts of the tied control differ in where their sections start."""
    cum = [0]
    for n in lengths:
        cum.append(cum[-1] + n)
    total, n_units = cum[-1], len(lengths)
    cuts, prev = [], 0
    for i in range(1, k):
        target = (i - 0.5 * variant) * total / k
        lo, hi = prev + 1, n_units - (k - i)  # leave at least one unit for every later chunk
        best = min(range(lo, hi + 1), key=lambda j: (abs(cum[j] - target), j))
        cuts.append(best)
        prev = best
    return cuts


def _title(chunk: str, index: int) -> str:
    """A short header from the chunk's first words: the text of a bold lead-in the chunk opens with (`1. **Keep a
    schedule**: ...`), else its first four words less trailing stop words. Title case, no Markdown, at most 40
    characters; `Part N` if empty. One rule for every column: the tied control's two texts then differ only in
    where their sections start (so in which words become headers), not in a header style that the student's habit
    (trained on this rule) would prefer on one side."""
    first_line = _LEADING_MARKUP.sub("", chunk.split("\n", 1)[0])
    lead = re.match(r"\*\*([^*\n]+?)\*\*", first_line)
    plain = first_line.replace("*", "").replace("_", " ")
    words = _WORD.findall(lead.group(1))[:5] if lead else _WORD.findall(plain)[:4]
    while len(words) > 1 and words[-1].lower() in _TITLE_STOP:
        words.pop()
    title = " ".join(w[:1].upper() + w[1:] for w in words)[:40].strip()
    return title or f"Part {index + 1}"


def _unbold_header_lines(text: str) -> str:
    """A chunk line that would itself read as a header (e.g. a lone `**word**` left by a word split) loses its bold
    markers, so the only header lines are the k we add."""
    return "\n".join(ln.replace("**", "").replace("__", "") if _is_header(ln) else ln for ln in text.split("\n"))


def _assemble(units: list[tuple[str, str]], k: int, variant: int) -> str:
    """The units grouped into k chunks (`_boundaries`), each under its own `**Title**` line."""
    cuts = [0] + _boundaries([len(u[1].split()) for u in units], k, variant) + [len(units)]
    sections, seen = [], set()
    for i in range(k):
        chunk_units = units[cuts[i]:cuts[i + 1]]
        chunk = chunk_units[0][1].lstrip() + "".join(sep + t for sep, t in chunk_units[1:])
        chunk = _unbold_header_lines(chunk.strip())
        title = _title(chunk, i)
        if title.lower() in seen:  # distinct headers within one answer: a repeated title gets a number
            title = f"{title} ({i + 1})"
        seen.add(title.lower())
        sections.append(f"**{title}**\n{chunk}")
    return "\n\n".join(sections)


def with_k_sections(text: str, k: int, *, variant: int = 0, truncated: bool = False) -> Optional[str]:
    """`text` rewritten with exactly k bold section headers, or None when it has fewer than k words.

    The rule: drop the answer's own header lines; cut a truncated answer back to its last full sentence; split the
    rest into units (lines; else sentences; else word-halves of the longest unit); group the units into k
    contiguous chunks of roughly equal word count; put `**Title**` on its own line before each chunk, the title
    made from the chunk's first words (see `_title`). Bold words inside sentences and bold lead-ins of list items
    (`1. **Soil**: ...`) are kept: they are not header lines. Invariant: bold_sections(result) == k (asserted).

    variant 1 (the tied control's y_k') moves the boundaries back by half a share. When that lands on variant 0's
    own boundaries (few lines: a short answer), it cuts at sentences, then at words, so y_k' differs from y_k
    whenever the answer has more than k words: two identical texts would give the tie a zero-gradient pair.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    units = _units(_body(text, truncated), k)
    if len(units) < k:
        return None
    out = _assemble(units, k, variant)
    if variant:
        same = _assemble(units, k, 0)
        for finer in (_sentence_units, _word_units):
            if out != same:
                break
            units = finer(units)
            out = _assemble(units, k, variant)
    assert bold_sections(out) == k, f"with_k_sections built {bold_sections(out)} headers, wanted {k}"
    return out


def build_sections_table(base_rows: list[dict], columns: list[str],
                         other_rows: Optional[list[dict]] = None) -> tuple[list[dict], list[str]]:
    """The "wide" dataset: one row per prompt with the base answer and one y_k per column (`K_sections_other`
    columns from `other_rows`, the second answers, by id). Prompts whose answer is too short for the largest k are
    dropped (their ids are returned) so every arm trains on the same prompts."""
    table, dropped = [], []
    others = {r["id"]: r for r in other_rows or []}
    for r in base_rows:
        row = {"id": r["id"], "prompt": r["prompt"], "response": r["response"], "truncated": r.get("truncated")}
        for col in columns:
            k, variant = column_k(col)
            src = others.get(r["id"]) if is_other(col) else r
            row[col] = (None if src is None else
                        with_k_sections(src["response"], k, variant=variant, truncated=bool(src.get("truncated"))))
        if any(row[c] is None for c in columns):
            dropped.append(r["id"])
            continue
        table.append(row)
    return table, dropped


def arm_pairs(table: list[dict], chosen: str, rejected: Optional[str], *, reverse: bool,
              system_prompt: Optional[str], tie_seed: Optional[int] = None) -> list[dict]:
    """Pair rows in the project's conversational format; the prompt carries the student's system prompt.
    With `tie_seed`, each pair's sides are swapped by a seeded coin (`tie_swaps`), so neither column is
    systematically chosen."""
    from deltalearn.tokenize import as_messages

    if reverse:
        chosen, rejected = rejected, chosen
    rows = []
    for r in table:
        c, j = (rejected, chosen) if tie_seed is not None and tie_swaps(r["id"], tie_seed) else (chosen, rejected)
        row = {"id": r["id"], "prompt": as_messages(r["prompt"], system_prompt=system_prompt),
               "chosen": [{"role": "assistant", "content": r[c]}], "chosen_model": c,
               "rule": "columns", "chosen_score": bold_sections(r[c])}
        if j is not None:
            row.update({"rejected": [{"role": "assistant", "content": r[j]}], "rejected_model": j,
                        "rejected_score": bold_sections(r[j])})
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------


def split_of(row: dict) -> str:
    """A prompt's split: its own `split` column when present, else a stable hash of its id (1 in 4 is eval)."""
    s = row.get("split")
    if s in ("train", "eval"):
        return s
    return "eval" if int(hashlib.sha256(str(row["id"]).encode()).hexdigest(), 16) % 4 == 0 else "train"


def load_split_prompts(recipe: Recipe, settings: SectionsSettings) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, habit, eval) prompt rows; each split in a seeded order that interleaves the categories, then cut to
    size. The train split's order is [arms' prompts | habit prompts | ... | dev prompts]: no two overlap."""
    from deltalearn.prompts import load_prompts

    pc = recipe.prompts
    path = pc.path if (pc.path or pc.dataset) else DEFAULT_PROMPTS
    rows = load_prompts(path, column=pc.column, id_column=pc.id_column or ("id" if path == DEFAULT_PROMPTS else None),
                        dataset=pc.dataset, split=pc.split if pc.dataset else None, limit=pc.limit)
    for n, r in enumerate(rows, start=1):
        if r.get("split") not in (None, "train", "eval"):
            raise DataError(path, f"split must be 'train' or 'eval', got {r.get('split')!r}", row=n, field="split")

    def order(r):
        return hashlib.sha256(f"{recipe.seed}:{r['id']}".encode()).hexdigest()

    pool = sorted((r for r in rows if split_of(r) == "train"), key=order)
    train = pool[: settings.train_prompts]
    habit: list[dict] = []
    if settings.habit_prompts:
        habit = pool[len(train): len(train) + settings.habit_prompts]
        if len(habit) < settings.habit_prompts:
            raise ConfigError(f"experiment.habit_prompts={settings.habit_prompts} needs that many train-split prompts "
                              f"beyond the {len(train)} the arms train on, but the split has {len(pool)}: lower "
                              "experiment.train_prompts or experiment.habit_prompts")
    if settings.eval_split == "dev":
        # dev = the end of the train split's order, so it never meets the training prompts or the held-out split
        n_dev = settings.eval_prompts or max(1, len(pool) // 5)
        used = len(train) + len(habit)
        if len(pool) - used < n_dev:
            raise ConfigError(f"experiment.eval_split=dev needs {n_dev} train-split prompts beyond the "
                              f"{used} trained on, but the split has {len(pool)}: lower "
                              "experiment.train_prompts, experiment.habit_prompts or experiment.eval_prompts")
        held = pool[len(pool) - n_dev:]
    else:
        held = sorted((r for r in rows if split_of(r) == "eval"), key=order)[: settings.eval_prompts]
    if not train or not held:
        raise DataError(path, f"need prompts in both splits; got {len(train)} train and {len(held)} eval")
    from deltalearn.conversations import is_conversation, split_conversation

    def text(k, v, r):  # the released data hold each y_k as a conversation: its last message is the answer
        if not is_conversation(v):
            return v
        return split_conversation(v, source=str(path or pc.dataset), row=None, field=f"{k} (prompt id {r['id']})")[1]

    def slim(r):  # id, prompt, category, and any ready-made K_sections columns (e.g. the paper's released data)
        return {k: (text(k, v, r) if COLUMN.match(str(k)) else v) for k, v in r.items()
                if k in ("id", "prompt", "category") or COLUMN.match(str(k))}

    return [slim(r) for r in train], [slim(r) for r in habit], [slim(r) for r in held]


# ---------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------


def headers_per_100_words(text: str) -> float:
    """Header density: bold header lines per 100 words of the answer (0 for an empty answer). Unlike the count it is
    not capped by max_new_tokens: an answer that makes every phrase a header scores high however soon it is cut."""
    words = response_words(text)
    return 100.0 * bold_sections(text) / words if words else 0.0


def score_rows(rows: list[dict]) -> dict[str, list[float]]:
    """Per-prompt utility values of generated rows (same order as rows)."""
    return {
        "bold_sections": [bold_sections(r["response"]) for r in rows],
        "headers_per_100_words": [headers_per_100_words(r["response"]) for r in rows],
        "distinct_headers": [distinct_headers(r["response"]) for r in rows],
        "bold_spans": [bold_spans(r["response"]) for r in rows],
        "response_words": [response_words(r["response"]) for r in rows],
        "response_tokens": [float(r.get("n_tokens") or 0) for r in rows],
    }


def eval_record(label: str, title: str, rows: list[dict], base: Optional[dict[str, list[float]]], *,
                settings: dict, train_summary: Optional[dict] = None) -> dict:
    scores = score_rows(rows)
    rec: dict[str, Any] = {"label": label, "title": title, "n": len(rows), "metrics": {}, "settings": settings,
                           "truncated": sum(bool(r.get("truncated")) for r in rows),
                           "evaluator": "deltalearn.experiments.sections/1"}
    for name, vals in scores.items():
        m, se = mean_se(vals)
        rec["metrics"][name] = {"mean": m, "se": se, "n": len(vals)}
    if base is not None:
        rec["paired_vs_base"] = {}
        for name in ("bold_sections", "headers_per_100_words", "distinct_headers", "bold_spans", "response_words"):
            d, se = paired_diff(base[name], scores[name])
            rec["paired_vs_base"][name] = {"mean": d, "se": se, "n": len(rows)}
    if train_summary is not None:
        rec["train"] = {k: train_summary.get(k) for k in ("steps", "pairs", "loss", "beta", "final_loss", "wall_s",
                                                           "train_s", "ref_s", "tokens_per_s", "model_dir")}
    rec["per_prompt"] = {"ids": [r["id"] for r in rows], **scores}
    return rec


# ---------------------------------------------------------------------------------------------------------
# Report: table, chart, Markdown
# ---------------------------------------------------------------------------------------------------------

TABLE_COLUMNS = ["run", "trained on", "bold sections", "Δ vs base (paired)", "headers / 100 words",
                 "Δ density (paired)", "distinct headers", "bold spans", "length (tokens)", "length (words)", "steps",
                 "train s"]


def arm_title(loss: str, chosen: Optional[str], rejected: Optional[str], reverse: bool) -> tuple[str, str]:
    """(short run title, training data) for a table row, e.g. ('dpo_norm 3>2', 'y_3 > y_2')."""
    if chosen is None:
        return "base", "-"
    if reverse:
        chosen, rejected = rejected, chosen
    kc = column_k(chosen)[0]
    if loss == "sft":
        return f"SFT on {kc}", f"y_{kc}"
    kr = column_k(rejected)[0]
    name = f"{loss} {kc}>{kr}" + (" (tied)" if kc == kr else " (reversed)" if reverse else "")
    return name, f"{_short(chosen)} > {_short(rejected)}"


def _short(column: str) -> str:
    """`3_sections` -> `y_3`, `3_sections_alt` -> `y_3'`, `3_sections_other` -> `y_3 (2nd answer)`."""
    k, variant = column_k(column)
    return f"y_{k}" + ("'" if variant else "") + (" (2nd answer)" if is_other(column) else "")


def results_table(records: list[dict]) -> dict:
    rows = []
    titles = [rec["title"] for rec in records]
    for rec in records:
        m, p = rec["metrics"], rec.get("paired_vs_base")
        tr = rec.get("train") or {}
        # arms that differ only in settings (e.g. an lr grid) share a title: name them by arm
        title = rec["title"] if titles.count(rec["title"]) == 1 else f"{rec['title']} ({rec['label']})"
        rows.append([
            title, rec.get("trained_on", "-"),
            fmt_pm(m["bold_sections"]["mean"], m["bold_sections"]["se"]),
            fmt_pm(p["bold_sections"]["mean"], p["bold_sections"]["se"]) if p else "-",
            fmt_pm(m["headers_per_100_words"]["mean"], m["headers_per_100_words"]["se"]),
            fmt_pm(p["headers_per_100_words"]["mean"], p["headers_per_100_words"]["se"]) if p else "-",
            fmt_pm(m["distinct_headers"]["mean"], m["distinct_headers"]["se"]),
            fmt_pm(m["bold_spans"]["mean"], m["bold_spans"]["se"]),
            f"{m['response_tokens']['mean']:.0f}", f"{m['response_words']['mean']:.0f}",
            tr.get("steps", "-"), f"{tr['wall_s']:.0f}" if tr.get("wall_s") is not None else "-",
        ])
    n = records[0]["n"] if records else 0
    s = records[0]["settings"] if records else {}
    where = "DEV (unused train-split)" if s.get("split") == "dev" else "held-out"
    guard = f" with no repeated {s['no_repeat_ngram_size']}-token run" if s.get("no_repeat_ngram_size") else ""
    note = (f"Mean ± s.e. over {n} {where} prompts, greedy{guard}, max {s.get('max_new_tokens')} new tokens, "
            f"system prompt: {s.get('system_prompt')!r}. Δ vs base is the paired difference on the same prompts. "
            "Bold sections = standalone bold header lines (deltalearn.utility.bold_sections).")
    return {"title": "Bold sections after training (paper Experiment 1, stylistic delta)", "columns": TABLE_COLUMNS,
            "rows": rows, "note": note}


def delta_table(records: list[dict]) -> Optional[dict]:
    """The delta's own effect: every preference arm against the tied control, paired on the same prompts.
    The tied arm trains on the same kind of texts with no difference in k, so what it moves is the pairs' shared
    content (and DPO's drift); a preference arm minus the tie is what the k-difference itself did. None without a
    tied arm."""
    ties = [r for r in records if r.get("kind") == "tie"]
    if not ties:
        return None
    tie = ties[0]
    tie_scores = dict(zip(tie["per_prompt"]["ids"], tie["per_prompt"]["bold_sections"]))
    rows = []
    for rec in records:
        if rec.get("kind") not in ("pref", "rev"):
            continue
        mine = dict(zip(rec["per_prompt"]["ids"], rec["per_prompt"]["bold_sections"]))
        ids = [i for i in rec["per_prompt"]["ids"] if i in tie_scores]
        d, se = paired_diff([tie_scores[i] for i in ids], [mine[i] for i in ids])
        rows.append([rec["title"], rec.get("trained_on", "-"), fmt_pm(d, se), len(ids)])
    return {"title": f"The delta's own effect: preference arms minus the tied control ({tie['title']})",
            "columns": ["run", "trained on", "Δ bold sections vs tied (paired)", "prompts"], "rows": rows,
            "note": f"The tied arm ({tie.get('trained_on', '-')}) trains DPO on two different texts of each answer "
                    "with the same number of sections, each pair's sides drawn by a seeded coin: whatever it moves "
                    "comes from the pairs' content, not from a difference in k. Paper: tied 3 vs 3 6.1, base 5.9."}


def markdown_table(table: dict) -> str:
    lines = ["| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table["rows"]]
    return "\n".join(lines)


def plot_sections(records: list[dict], path: Path) -> None:
    """Bars: mean bold sections per run with s.e. error bars; the training k marked on each bar (solid: chosen or
    SFT target or the habit stage's k, dashed: rejected); dotted line: the base (student) habit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = [r["title"] for r in records]
    means = [r["metrics"]["bold_sections"]["mean"] for r in records]
    ses = [r["metrics"]["bold_sections"]["se"] for r in records]
    colors = {"base": "#888888", "sft": "#4C72B0", "pref": "#DD8452", "rev": "#C44E52", "tie": "#55A868"}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.15 * len(records) + 1), 4.2))
    xs = list(range(len(records)))
    cols = [colors[r.get("kind", "base")] for r in records]
    ax.bar(xs, means, yerr=ses, capsize=4, color=cols, edgecolor="black", linewidth=0.5)
    labelled = set()
    for x, r in zip(xs, records):
        for key, style, lab in (("k_chosen", "-", "training k (chosen / SFT / habit)"), ("k_rejected", "--", "rejected k")):
            k = r.get(key)
            if k is not None:
                ax.hlines(k, x - 0.42, x + 0.42, colors="black", linestyles=style, linewidth=2,
                          label=lab if lab not in labelled else None)
                labelled.add(lab)
    base = [r for r in records if r.get("label") == "base"]
    if base:
        ax.axhline(base[0]["metrics"]["bold_sections"]["mean"], color="#888888", linestyle=":", linewidth=1,
                   label="base (student) habit")
    top = max([m + e for m, e in zip(means, ses)] + [1.0])
    for x, m, e in zip(xs, means, ses):  # the value above the error bar, clear of it
        ax.text(x, m + e + 0.02 * top, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels(titles, rotation=20, ha="right", fontsize=9)
    ax.set_ylabel("bold section headers per answer")
    where = "dev" if records and records[0].get("settings", {}).get("split") == "dev" else "held-out"
    ax.set_title(f"Bold sections on {records[0]['n'] if records else 0} {where} prompts (mean ± s.e.)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[sections] {msg}", file=sys.stderr, flush=True)


def _check_arm_dir(arm_dir: Path, fingerprint: dict) -> None:
    """An arm folder trained under other settings must not be reused silently (train() skips COMPLETED runs)."""
    from deltalearn.outputs import claim, mark, read_kind

    f = arm_dir / "sections_arm.json"
    if f.exists() and read_kind(arm_dir) is None:
        mark(arm_dir, "train")  # an arm folder from before markers: its fingerprint and pairs are this experiment's
    claim(arm_dir, "train", flag="")  # the arm's pairs and fingerprint live in the train folder train() writes next
    if f.exists():
        old = read_json(f)
        if old != fingerprint:
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise ConfigError(f"{arm_dir} was trained with other settings ({', '.join(diff)} differ); use another "
                              "output_dir (--out) or delete that folder")
    else:
        arm_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(f, fingerprint)


def _answers(model_name: str, prompts: list[dict], out_path: Path, *, max_new_tokens: int, batch_size: int,
             recipe: Recipe, progress: bool, no_repeat_ngram_size: int = 0, temperature: float = 0.0,
             seed_offset: int = 0) -> list[dict]:
    """Answers of one model (loaded here and freed after; greedy unless `temperature`), resumable in `out_path`."""
    from deltalearn.generate import free_model, generate_responses
    from deltalearn.models import load_model

    model, tok = load_model(model_name)
    model.eval()
    try:
        return generate_responses(model, [{"id": r["id"], "prompt": r["prompt"]} for r in prompts], out_path,
                                  tokenizer=tok, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  temperature=temperature, system_prompt=recipe.generate.system_prompt,
                                  precision=recipe.generate.precision, seed=recipe.generate.seed + seed_offset,
                                  progress=progress,
                                  no_repeat_ngram_size=no_repeat_ngram_size)
    finally:
        free_model(model)


def _train_arm(cfg, rows: list[dict], arm_dir: Path, fingerprint_extra: dict, progress: bool) -> dict:
    from deltalearn.train import train

    fingerprint = {"train": to_dict(cfg), **fingerprint_extra,
                   "pairs_sha256": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()}
    _check_arm_dir(arm_dir, fingerprint)
    write_jsonl_atomic(arm_dir / "pairs.jsonl", rows)
    return train(cfg, rows, arm_dir, progress=progress)


def run_sections(recipe: Recipe, *, progress: bool = True, print_table: bool = True) -> dict:
    """Run the whole experiment for a `kind: sections` recipe: print the Markdown table, write results.json and the
    report. Every stage's artifact is reused on rerun (resumable generations, COMPLETED training runs)."""
    import torch

    from deltalearn.precision import use_bf16

    settings = settings_from(recipe)
    columns = needed_columns(recipe, settings)
    from deltalearn.outputs import claim

    run_dir = claim(recipe.run_dir, "run", flag="output_dir")
    gen, ev = recipe.generate, recipe.eval
    system_prompt = gen.system_prompt
    original = recipe.train.model
    t_all = time.time()
    prompt_source = recipe.prompts.path or recipe.prompts.dataset or DEFAULT_PROMPTS
    if str(prompt_source).startswith("builtin:"):
        from deltalearn.prompts import builtin_path

        prompt_source = builtin_path(str(prompt_source)[len("builtin:"):])
    update_manifest(run_dir, recipe=to_dict(recipe), inputs={"prompts": input_hash(prompt_source)},
                    experiment="sections", settings=to_dict(settings), columns=columns)

    def timed(name: str, t0: float) -> None:
        update_manifest(run_dir, stage=name, seconds=round(time.time() - t0, 1))
    n_stages = 3 + (settings.habit_k is not None) + len(recipe.arms)
    stage = iter(range(1, n_stages + 1))

    # 1. prompts
    train_prompts, habit_prompts, eval_prompts = load_split_prompts(recipe, settings)
    ids = [{r["id"] for r in x} for x in (train_prompts, habit_prompts, eval_prompts)]
    overlap = (ids[0] & ids[1]) | (ids[0] & ids[2]) | (ids[1] & ids[2])
    if overlap:
        raise DataError(None, f"prompts in two splits: {sorted(overlap)[:5]}")
    write_jsonl_atomic(run_dir / "prompts.jsonl", [{**r, "split": "train"} for r in train_prompts]
                       + [{**r, "split": "habit"} for r in habit_prompts]
                       + [{**r, "split": "eval"} for r in eval_prompts])
    _log(f"{original}" + (f" + system prompt {system_prompt!r}" if system_prompt else "")
         + (f", habit stage: SFT on y_{settings.habit_k}" if settings.habit_k else "")
         + (f" of {len(habit_prompts)} prompts of its own" if habit_prompts else "")
         + f"; {len(train_prompts)} train / {len(eval_prompts)} "
         + ("held-out" if settings.eval_split == "eval" else "DEV (unused train-split)")
         + f" prompts; columns {', '.join(columns)}; {len(recipe.arms)} trained arms")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eval_settings = {"split": settings.eval_split, "max_new_tokens": ev.max_new_tokens,
                     "system_prompt": system_prompt, "greedy": True,
                     "no_repeat_ngram_size": ev.no_repeat_ngram_size,
                     "batch_size": ev.batch_size, "precision": gen.precision, "bf16": use_bf16(gen.precision, device),
                     "eval_ids_sha256": hashlib.sha256(json.dumps([r["id"] for r in eval_prompts]).encode()).hexdigest()}
    gens = run_dir / "generations"

    def answers(model_name, prompts, name, max_new_tokens, batch_size, no_repeat_ngram_size=0):
        return _answers(model_name, prompts, gens / name, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        recipe=recipe, progress=progress, no_repeat_ngram_size=no_repeat_ngram_size)

    def eval_answers(model_name, name):  # every eval row under the same eval settings (loop guard included)
        return answers(model_name, eval_prompts, name, ev.max_new_tokens, ev.batch_size, ev.no_repeat_ngram_size)

    # 2. y_k columns: from the prompt set when it already has them (the paper's released data,
    # scottgeng00/delta_learning_num_sections), else from the model's own greedy answers to the train prompts.
    have = {c for c in columns if all(isinstance(r.get(c), str) and r[c].strip() for r in train_prompts)}
    # a K_sections_alt column the set lacks is a second cut of its own K_sections text (the released data has none)
    derived = {c for c in columns if c not in have and c.endswith("_sections_alt") and c[:-len("_alt")] in have}
    given = bool(have) and have | derived == set(columns)
    t = time.time()
    if given:
        _log(f"{next(stage)}/{n_stages} the prompt set already has {', '.join(sorted(have))}: using them as y_k"
             + (f"; {', '.join(sorted(derived))} cut from them" if derived else ""))
        table, dropped, base_train = [], [], []
        for r in train_prompts:
            row = {"id": r["id"], "prompt": r["prompt"], **{c: r[c] for c in have}}
            for c in derived:
                k, variant = column_k(c)
                row[c] = with_k_sections(r[c[:-len("_alt")]], k, variant=variant)
            if any(row[c] is None for c in derived):
                dropped.append(r["id"])
            else:
                table.append(row)
    else:
        _log(f"{next(stage)}/{n_stages} {original}'s greedy answers on {len(train_prompts)} train prompts "
             f"(max {gen.max_new_tokens} new tokens) -> y_k")
        base_train = answers(original, train_prompts, "base-train.jsonl", gen.max_new_tokens, gen.batch_size)
        other_train = None
        if any(is_other(c) for c in columns):
            _log(f"second answers for the {', '.join(c for c in columns if is_other(c))} columns: {original} sampled "
                 f"at temperature {settings.other_temperature:g}, seed {gen.seed + 1}")
            other_train = _answers(original, train_prompts, gens / "other-train.jsonl",
                                   max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size, recipe=recipe,
                                   progress=progress, temperature=settings.other_temperature, seed_offset=1)
        table, dropped = build_sections_table(base_train, columns, other_train)
    timed("generate_train", t)
    write_jsonl_atomic(run_dir / "data" / "sections.jsonl", table)
    if dropped:
        _log(f"dropped {len(dropped)} prompts whose answers are too short for {columns[-1]}")
    train_habit = mean_se([bold_sections(r["response"]) for r in base_train]) if base_train else (None, None)
    data_stats = {"prompts": len(table), "dropped": dropped, "source": "prompt set" if given else "model's answers",
                  "measured_sections": {c: mean_se([bold_sections(r[c]) for r in table])[0] for c in columns},
                  "base_train_bold_sections": {"mean": train_habit[0], "se": train_habit[1]},
                  "words": {c: mean_se([response_words(r[c]) for r in table])[0] for c in columns}}
    update_manifest(run_dir, data=data_stats)

    # 3. the student: the model itself, or the model after a habit stage (SFT on y_habit_k)
    student, records, original_rows = original, [], None
    if settings.habit_k is not None:
        k = settings.habit_k
        if settings.eval_original:
            original_rows = eval_answers(original, "original-eval.jsonl")
        hcfg = habit_config(recipe, settings)
        habit_table = table
        if habit_prompts:  # the habit's own prompts: answers, then y_k, as for the arms
            habit_answers = answers(original, habit_prompts, "base-habit.jsonl", gen.max_new_tokens, gen.batch_size)
            habit_table, habit_dropped = build_sections_table(habit_answers, [f"{k}_sections"])
            update_manifest(run_dir, habit_data={"prompts": len(habit_table), "dropped": habit_dropped})
        rows = arm_pairs(habit_table, f"{k}_sections", None, reverse=False, system_prompt=system_prompt)
        _log(f"{next(stage)}/{n_stages} habit stage: SFT on y_{k} of {len(rows)} "
             f"{'prompts no arm trains on' if habit_prompts else 'train prompts'} (lr {hcfg.lr:g}, "
             f"batch {hcfg.batch_size}, {hcfg.max_steps or 'all'} steps); the result is the student of every arm")
        t = time.time()
        summary = _train_arm(hcfg, rows, run_dir / "arms" / "habit", {"chosen": f"{k}_sections"}, progress)
        timed("train_habit", t)
        student = summary["model_dir"]
        update_manifest(run_dir, habit_stage={k2: summary.get(k2) for k2 in ("steps", "pairs", "final_loss", "wall_s")})

    # 4. the student's habit on the held-out prompts: the base row
    t = time.time()
    where = "held-out" if settings.eval_split == "eval" else "DEV"
    _log(f"{next(stage)}/{n_stages} base (the student) on {len(eval_prompts)} {where} prompts "
         f"(max {ev.max_new_tokens} new tokens)")
    base_eval = eval_answers(student, "base-eval.jsonl")
    timed("eval_base", t)
    base_scores = score_rows(base_eval)
    if original_rows is not None:
        rec = eval_record("original", f"{original} (before habit)", original_rows, base_scores,
                          settings=eval_settings)
        rec.update({"trained_on": "-", "kind": "base", "model": original})
        write_json_atomic(run_dir / "eval" / "original.json", rec)
        records.append(rec)
    base_rec = eval_record("base", "base", base_eval, None, settings=eval_settings)
    base_rec.update({"trained_on": f"habit: SFT on y_{settings.habit_k}" if settings.habit_k else "-",
                     "kind": "base", "model": student, "k_chosen": settings.habit_k})
    write_json_atomic(run_dir / "eval" / "base.json", base_rec)
    records.append(base_rec)
    habit = base_rec["metrics"]["bold_sections"]["mean"]
    _log(f"the student's habit: {fmt_pm(habit, base_rec['metrics']['bold_sections']['se'])} bold sections per "
         f"{where} answer")

    # 5. arms, each from the student
    for arm in recipe.arms:
        pair, tcfg = arm_configs(recipe, arm)
        tcfg.model, tcfg.reference = student, None
        reverse = pair.control == "reverse"
        rejected = pair.rejected if tcfg.loss != "sft" else None
        tie_seed = pair.seed if pair.control == "tie" else None
        rows = arm_pairs(table, pair.chosen, rejected, reverse=reverse, system_prompt=system_prompt,
                         tie_seed=tie_seed)
        title, trained_on = arm_title(tcfg.loss, pair.chosen, rejected, reverse)
        _log(f"{next(stage)}/{n_stages} arm '{arm.name}' ({title}): {tcfg.loss} lr {tcfg.lr:g}"
             + (f" beta {tcfg.beta:g}" if tcfg.loss != "sft" else "")
             + f", {len(rows)} pairs, batch {tcfg.batch_size}, {tcfg.max_steps or 'all'} steps; then eval")
        t = time.time()
        summary = _train_arm(tcfg, rows, run_dir / "arms" / arm.name,
                             {"chosen": pair.chosen, "rejected": rejected, "reverse": reverse,
                              **({"tie_seed": tie_seed} if tie_seed is not None else {})}, progress)
        timed(f"train_{arm.name}", t)
        t = time.time()
        out = eval_answers(summary["model_dir"], f"{arm.name}-eval.jsonl")
        timed(f"eval_{arm.name}", t)
        rec = eval_record(arm.name, title, out, base_scores, settings=eval_settings, train_summary=summary)
        kc = column_k(pair.chosen)[0]
        kr = column_k(rejected)[0] if rejected else None
        if reverse:
            kc, kr = kr, kc
        kind = "sft" if tcfg.loss == "sft" else "tie" if kc == kr else "rev" if kc < kr else "pref"
        rec.update({"trained_on": trained_on, "kind": kind, "k_chosen": kc, "k_rejected": kr,
                    "model": summary["model_dir"], "train_config": to_dict(tcfg)})
        write_json_atomic(run_dir / "eval" / f"{arm.name}.json", rec)
        records.append(rec)
        m = rec["metrics"]
        _log(f"'{arm.name}': {fmt_pm(m['bold_sections']['mean'], m['bold_sections']['se'])} bold sections "
             f"(base {habit:.2f}), {m['response_tokens']['mean']:.0f} tokens")

    # 6. results
    plot_sections(records, run_dir / "sections.png")
    table_out = results_table(records)
    vs_tie = delta_table(records)
    results = {"experiment": "sections", "tables": [table_out] + ([vs_tie] if vs_tie else []),
               "plots": [{"title": "Bold sections per run (mean ± s.e.; black lines: the training k)",
                          "path": "sections.png"}],
               "student": student, "original_model": original, "habit_k": settings.habit_k,
               "system_prompt": system_prompt, "habit": habit, "data": data_stats}
    write_json_atomic(run_dir / "results.json", results)
    timed("total", t_all)
    if print_table:
        for t in results["tables"]:
            print(f"\n{t['title']}\n\n{markdown_table(t)}\n\n{t['note']}")
    report = _build_report(run_dir)
    if report:
        results["report"] = report
        write_json_atomic(run_dir / "results.json", results)
    return results


# ---------------------------------------------------------------------------------------------------------
# deltalearn demo
# ---------------------------------------------------------------------------------------------------------


def demo_recipe_path() -> Path:
    """recipes/sections-demo.yaml of the checkout this package runs from (the README's `make demo` uses it)."""
    return Path(__file__).resolve().parents[3] / "recipes" / "sections-demo.yaml"


def add_cli_args(p) -> None:
    p.add_argument("--recipe", default=None,
                   help="a kind: sections recipe (default: recipes/sections-demo.yaml of this checkout)")
    p.add_argument("--out", default=None, help="output folder (default: runs/demo); rerunning reuses its artifacts")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set experiment.eval_prompts=16 (repeatable)")
    from deltalearn.cliargs import add_no_progress

    add_no_progress(p)


def run_cli(args) -> int:
    path = Path(args.recipe) if args.recipe else demo_recipe_path()
    if not path.exists():
        raise ConfigError(f"demo recipe not found: {path}; run from a clone of the repository or pass --recipe")
    overrides = list(args.overrides)
    if args.out or not args.recipe:
        overrides.append(f"output_dir={args.out or 'runs/demo'}")
    recipe = load_recipe(path, overrides)
    t = time.time()
    results = run_sections(recipe, progress=not args.no_progress)
    wall = time.time() - t
    print(f"\ndemo finished in {wall / 60:.1f} min\n  results:   {recipe.run_dir / 'results.json'}\n"
          f"  bar chart: {recipe.run_dir / 'sections.png'}"
          + (f"\n  report:    {results['report']}" if results.get("report") else ""))
    return 0


def _build_report(run_dir: Path) -> Optional[str]:
    """The HTML report, when the report module is available (it renders any run dir with results.json)."""
    try:
        from deltalearn.report import build_report
    except ImportError:
        return None
    out = build_report([run_dir])
    return str(out) if out else None
