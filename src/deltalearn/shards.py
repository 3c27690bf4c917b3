"""Generation split across GPUs or machines: `deltalearn generate --shard I/N`, then `--merge N`.

A prompt belongs to shard `hash(id) mod N`, so shards are disjoint, cover the prompt set, and do not depend on the
order, the `--limit` or the machine: rerunning a shard (it resumes like any generation file) always sees the same
prompts. Each shard writes `<slug>.shard-I-of-N.jsonl` (+ its meta); the merge checks that every shard was made
with the same settings, refuses duplicated ids (naming them, writing nothing), names the missing ids and the shard
to rerun, and writes `<slug>.jsonl` in prompt order with a complete meta, exactly what one unsharded run writes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from deltalearn.io import DataError, read_json, write_json_atomic, write_jsonl_atomic
from deltalearn.recipe import ConfigError


def parse_shard(text: str, flag: str = "--shard") -> tuple[int, int]:
    """'I/N' -> (I, N), with 1 <= I <= N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"{flag} {text!r}: expected I/N with whole numbers 1 <= I <= N (e.g. 1/8 ... 8/8)")
    return int(m.group(1)), int(m.group(2))


def shard_of(prompt_id: str, n: int) -> int:
    """The shard (1..n) a prompt id belongs to: a stable hash, not Python's per-process `hash`."""
    return int.from_bytes(hashlib.sha256(str(prompt_id).encode()).digest()[:8], "big") % n + 1


def select_shard(prompts: list[dict], shard: tuple[int, int]) -> list[dict]:
    i, n = shard
    return [r for r in prompts if shard_of(r["id"], n) == i]


def shard_file(out_dir: Path, slug: str, shard: tuple[int, int]) -> Path:
    return Path(out_dir) / f"{slug}.shard-{shard[0]}-of-{shard[1]}.jsonl"


def merge_shards(out_dir: str | Path, slug: str, n: int, prompts: list[dict]) -> Path:
    """Merge the N shard files of `slug` into `<slug>.jsonl`; returns its path. Writes nothing on any error."""
    from deltalearn.generate import MUST_MATCH, meta_path, read_done

    out_dir = Path(out_dir)
    files = [shard_file(out_dir, slug, (i, n)) for i in range(1, n + 1)]
    absent = [str(f) for f in files if not f.exists()]
    if absent:
        raise DataError(out_dir, f"cannot merge {n} shards of {slug}: no file {', '.join(absent)}; run "
                        f"`deltalearn generate ... --shard I/{n}` for each")
    metas = [read_json(meta_path(f)) for f in files]
    for f, m in zip(files[1:], metas[1:]):
        diff = [k for k in MUST_MATCH if m.get(k) != metas[0].get(k)]
        if diff:
            raise DataError(f, f"made with other settings than {files[0].name} ({', '.join(diff)}); shards of one "
                            "generation must share model, decoding and template")
    rows: dict[str, dict] = {}
    where: dict[str, str] = {}
    dups: list[str] = []
    for f in files:
        for pid, row in read_done(f).items():
            if pid in rows:
                dups.append(f"'{pid}' ({where[pid]} and {f.name})")
            rows[pid], where[pid] = row, f.name
    if dups:
        raise DataError(out_dir, f"{len(dups)} ids are in more than one shard, e.g. {', '.join(dups[:5])}: these "
                        "files are not shards of one split (different N, or files copied in); nothing written")
    missing = [r["id"] for r in prompts if r["id"] not in rows]
    if missing:
        by_shard = sorted({shard_of(pid, n) for pid in missing})
        raise DataError(out_dir, f"{len(missing)} prompts have no response yet (first: {missing[:5]}); rerun "
                        + ", ".join(f"--shard {i}/{n}" for i in by_shard) + " (each resumes where it stopped)")
    known = {r["id"] for r in prompts}
    extra = [pid for pid in rows if pid not in known]
    if extra:
        raise DataError(out_dir, f"{len(extra)} rows have ids not in the prompt set (first: {extra[:5]}); merge "
                        "with the prompts the shards were generated from")
    target = out_dir / f"{slug}.jsonl"
    write_jsonl_atomic(target, [rows[r["id"]] for r in prompts])
    summaries = [m.get("summary") or {} for m in metas]
    summary = {k: sum(s.get(k) or 0 for s in summaries) for k in ("rows", "generated", "resumed", "tokens",
                                                                   "truncated")}
    meta = {k: v for k, v in metas[0].items() if k not in ("summary", "load_seconds")}
    write_json_atomic(meta_path(target), {**meta, "complete": True, "summary": summary,
                                          "merged_from": [f.name for f in files]})
    return target
