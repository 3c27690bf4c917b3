"""`runs/NAME/manifest.json`: what produced a run — resolved recipe, versions, git revision, seed, input hashes,
and each stage's wall time. Every number in a report must trace back to a run with a manifest on disk."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from deltalearn.io import DataError, read_json, sha256_file, sha256_json, write_json_atomic

PACKAGES = ("deltalearn", "torch", "transformers", "accelerate", "datasets", "peft", "trl", "numpy", "tokenizers")


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def git_revision() -> str | None:
    """The deltalearn source checkout's commit (with '+dirty' when it has uncommitted changes), if any."""
    src = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def input_hash(path: str | Path | None) -> str | None:
    """sha256 of an input file; for a folder, of its files' names and hashes."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        import hashlib

        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(p)}:{sha256_file(f)}".encode())
        return h.hexdigest()
    return None


HASH_KEY = "content_sha256"


def _content_hash(m: dict) -> str:
    return sha256_json({k: v for k, v in m.items() if k != HASH_KEY})


def read_manifest(path: str | Path) -> dict:
    """A run manifest, checked against the content hash it carries: a truncated or edited file is a DataError
    naming it (manifests written before hashes existed are read unchecked)."""
    path = Path(path)
    m = read_json(path)
    if not isinstance(m, dict):
        raise DataError(path, f"a run manifest must be a JSON object, got {type(m).__name__}")
    want = m.get(HASH_KEY)
    if want is not None and want != _content_hash(m):
        raise DataError(path, f"content hash mismatch (field '{HASH_KEY}'): the manifest was altered or damaged "
                        "after it was written; restore it, or delete the field to accept the edit")
    return m


def update_manifest(run_dir: str | Path, *, recipe: dict | None = None, stage: str | None = None,
                    seconds: float | None = None, inputs: dict[str, Any] | None = None, **extra) -> dict:
    """Create or update the run's manifest (atomic write). Stage timings accumulate under `stages`."""
    path = Path(run_dir) / "manifest.json"
    m = read_manifest(path) if path.exists() else {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    m["versions"] = versions()
    m["git"] = git_revision()
    m["platform"] = {"machine": platform.machine(), "processor": platform.processor() or None,
                     "system": platform.system()}
    if recipe is not None:
        m["recipe"] = recipe
        m["seed"] = recipe.get("seed")
    if inputs:
        m.setdefault("inputs", {}).update(inputs)
    if stage is not None:
        m.setdefault("stages", {})[stage] = {"seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime())}
    m.update(extra)
    m = json.loads(json.dumps(m, default=str))  # hash exactly what a reader will see
    m[HASH_KEY] = _content_hash(m)
    write_json_atomic(path, m)
    return m
