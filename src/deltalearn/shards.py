"""Generation split across GPUs or machines: `deltalearn generate --shard I/N`, then `--merge N`.

A prompt belongs to shard `hash(id) mod N`, so shards are disjoint, cover the prompt set, and do not depend on the
order, the `--limit` or the machine: rerunning a shard (it resumes like any generation file) always sees the same
prompts. Each shard writes `<slug>.shard-I-of-N.jsonl` (+ its meta); the merge checks that every shard was made
with the same settings, refuses duplicated ids (naming them, writing nothing), names the missing ids and the shard
to rerun, and writes `<slug>.jsonl` in prompt order with a complete meta, exactly what one unsharded run writes
(`deltalearn.generate.merge_shards`, beside the file format it reads). Pure functions: no I/O here.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

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
