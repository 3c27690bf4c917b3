"""Loading a prompt set: from JSONL/JSON/Parquet/CSV, a folder saved with `datasets.save_to_disk`, or a hub
dataset, into rows `{"id", "prompt", **extra columns}` with stable ids.

- The prompt column holds a string or a list of chat messages ({role, content} with string content).
- The id comes from `id_column` when given, else from a hash of the prompt's content, so the same prompt gets
  the same id on every machine and in every run (generation resume and pairing join on it).
- Nothing is dropped silently: a missing column is an error with a did-you-mean, a bad value an error naming the
  file, row and field, an empty set an error. Duplicate ids are errors; duplicate *prompts* under content-hash
  ids may be dropped on request (`dedupe=True`), and the count is reported.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from deltalearn.io import DataError, iter_jsonl, read_table

ID_HASH_CHARS = 16


def content_id(prompt: Any) -> str:
    """A stable id for a prompt: sha256 over its canonical JSON (a string and [user: string] hash differently
    on purpose: they render differently when a system prompt or multi-turn context is present)."""
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:ID_HASH_CHARS]


def check_prompt(value: Any, *, source: str | None, row: int, field: str) -> Any:
    """Validate one prompt value (non-empty string, or non-empty list of {role, content} with string content)."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(source, "empty prompt", row=row, field=field)
        return value
    if isinstance(value, (list, tuple)) and value:
        msgs = []
        for i, m in enumerate(value):
            if not isinstance(m, dict):
                raise DataError(source, f"message {i} is {type(m).__name__}, expected {{'role', 'content'}}",
                                row=row, field=field)
            for key in ("role", "content"):
                if not isinstance(m.get(key), str):
                    got = "missing" if key not in m else type(m[key]).__name__
                    raise DataError(source, f"message {i}: '{key}' must be a string (got {got})", row=row,
                                    field=field)
            msgs.append({"role": m["role"], "content": m["content"]})
        if not any(m["content"].strip() for m in msgs):
            raise DataError(source, "all messages are empty", row=row, field=field)
        return msgs
    kind = "empty list" if isinstance(value, (list, tuple)) else type(value).__name__
    raise DataError(source, f"prompt must be a string or a list of chat messages, got {kind}", row=row, field=field)


def missing_column_error(source: str | None, column: str, columns: list[str], *, what: str = "column",
                         row: int | None = None) -> DataError:
    close = difflib.get_close_matches(column, columns, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return DataError(source, f"no {what} '{column}' (columns: {', '.join(columns) or 'none'}){hint}", row=row,
                     field=column)


def _read_rows(path: str | None, dataset: str | None, split: str) -> tuple[list[tuple[int, dict]], str]:
    """(row number, row) pairs and a label for errors. JSONL rows are numbered by line, others from 1."""
    if path:
        p = Path(path)
        if p.suffix.lower() == ".jsonl" and p.is_file():
            return list(iter_jsonl(p)), str(p)
        rows = read_table(p)
        return list(enumerate(rows, start=1)), str(p)
    if dataset:
        try:
            import datasets

            ds = datasets.load_dataset(dataset, split=split)
        except Exception as e:  # noqa: BLE001 - any hub/network/format failure is reported with the name
            raise DataError(dataset, f"could not load hub dataset (split '{split}'): {e}") from None
        return list(enumerate(ds.to_list(), start=1)), f"{dataset}[{split}]"
    raise DataError(None, "no prompt source: give a file/folder path or a hub dataset name")


def builtin_path(name: str) -> Path:
    """`builtin:NAME` -> the package's data/NAME.jsonl."""
    p = Path(__file__).parent / "data" / f"{name}.jsonl"
    if not p.exists():
        known = sorted(f.stem for f in (Path(__file__).parent / "data").glob("*.jsonl"))
        raise DataError(p, f"no built-in prompt set '{name}' (built-in: {', '.join(known) or 'none'})")
    return p


def select_split(rows: list[tuple[int, dict]], source: str, split: str | None, default_split: str | None
                 ) -> list[tuple[int, dict]]:
    """The rows of one split of a file, by its `split` column. `split` is what the user asked for (an error when
    the file has no such column or no such rows); `default_split` applies only to files that have the column."""
    want = split or default_split
    if want is None:
        return rows
    if not any("split" in r for _, r in rows):
        if split is not None:
            raise DataError(source, f"has no 'split' column, so split '{split}' cannot be selected; drop --split to "
                            "use every row")
        return rows
    present = sorted({str(r.get("split")) for _, r in rows})
    chosen = [(n, r) for n, r in rows if r.get("split") == want]
    if not chosen:
        raise DataError(source, f"no rows with split '{want}' (splits in the file: {', '.join(present)})",
                        field="split")
    return chosen


def load_prompts(path: str | os.PathLike | None = None, *, column: str = "prompt", id_column: str | None = None,
                 dataset: str | None = None, split: str | None = None, default_split: str | None = None,
                 limit: int | None = None, keep: list[str] | None = None, dedupe: bool = False,
                 counts: dict | None = None) -> list[dict]:
    """Rows {"id", "prompt", **extra} in file order.

    split: a hub dataset's split (default "train"); for a file, keep only rows whose `split` column equals it (an
    error if the file has no such column). default_split: the split to take when `split` is not given and the file
    has a `split` column (generate: train; eval: the held-out eval split); files without the column give every row.
    keep: extra columns to carry along (e.g. ["reference"] for exact-answer utilities); None keeps every other
    column. dedupe: with content-hash ids, drop repeated prompts (counted in `counts["duplicates_dropped"]` and
    printed) instead of failing. `limit` applies after the split and de-duplication.
    """
    if limit is not None and limit < 1:
        raise DataError(None, f"limit must be at least 1 (got {limit}); leave it out to use every prompt")
    if path is not None and str(path).startswith("builtin:"):
        path = builtin_path(str(path)[len("builtin:"):])
    rows, source = _read_rows(str(path) if path is not None else None, dataset, split or "train")
    if not rows:
        raise DataError(source, "the prompt set is empty")
    if path is not None:  # a hub dataset's split was chosen when it was loaded
        rows = select_split(rows, source, split, default_split)
    out: list[dict] = []
    first_row_of: dict[str, int] = {}
    dropped: list[int] = []
    for n, row in rows:
        if column not in row:
            raise missing_column_error(source, column, list(row), row=n)
        prompt = check_prompt(row[column], source=source, row=n, field=column)
        whole = isinstance(prompt, list) and len(prompt) > 1 and prompt[-1]["role"] == "assistant"
        if whole:  # a whole conversation (the authors' released columns): the prompt is its messages before the answer
            prompt = prompt[:-1]
        if id_column is not None:
            if id_column not in row:
                raise missing_column_error(source, id_column, list(row), row=n)
            raw = row[id_column]
            if isinstance(raw, bool) or not isinstance(raw, (str, int)) or (isinstance(raw, str) and not raw.strip()):
                raise DataError(source, f"id must be a non-empty string or integer, got {raw!r}", row=n,
                                field=id_column)
            pid = str(raw)
        else:
            pid = content_id(prompt)
        if pid in first_row_of:
            if dedupe and id_column is None:
                dropped.append(n)
                continue
            what = f"duplicate id '{pid}'" if id_column else "duplicate prompt (same content hash)"
            hint = "" if id_column else "; pass dedupe=True (--dedupe) to drop repeats"
            raise DataError(source, f"{what}, first seen at row {first_row_of[pid]}{hint}", row=n,
                            field=id_column or column)
        first_row_of[pid] = n
        extra_cols = [c for c in row if c not in (column, id_column, "id", "prompt")] if keep is None else keep
        extra = {}
        for c in extra_cols:
            if c not in row:
                raise missing_column_error(source, c, list(row), row=n)
            extra[c] = row[c]
        if whole and column != "prompt" and keep is None:  # the column is also a response (e.g. `3_sections`)
            extra[column] = row[column]
        out.append({"id": pid, "prompt": prompt, **extra})
        if limit is not None and len(out) >= limit:
            break
    if dropped:
        print(f"{source}: dropped {len(dropped)} duplicate prompt(s) (rows {', '.join(map(str, dropped[:10]))}"
              f"{', ...' if len(dropped) > 10 else ''})", file=sys.stderr)
    if counts is not None:
        counts.update({"rows_read": len(rows), "duplicates_dropped": len(dropped), "prompts": len(out)})
    return out


def check_prompt_rows(prompts: list[dict], *, source: str | None = None) -> None:
    """Validate already-built prompt rows (API callers): id + prompt present, ids unique, prompts valid."""
    if not prompts:
        raise DataError(source, "the prompt set is empty")
    seen: dict[str, int] = {}
    for i, row in enumerate(prompts, start=1):
        if not isinstance(row, dict):
            raise DataError(source, f"expected a dict with 'id' and 'prompt', got {type(row).__name__}", row=i)
        for key in ("id", "prompt"):
            if key not in row:
                raise missing_column_error(source, key, list(row), what="key", row=i)
        if not isinstance(row["id"], str) or not row["id"]:
            raise DataError(source, f"id must be a non-empty string, got {row['id']!r}", row=i, field="id")
        check_prompt(row["prompt"], source=source, row=i, field="prompt")
        if row["id"] in seen:
            raise DataError(source, f"duplicate id '{row['id']}', first seen at row {seen[row['id']]}", row=i,
                            field="id")
        seen[row["id"]] = i
