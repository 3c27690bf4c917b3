"""`runs/NAME/manifest.json`: what produced a run — resolved recipe, versions, git revision, seed, input hashes,
and each stage's wall time. Every number in a report must trace back to a run with a manifest on disk."""

from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from deltalearn.io import read_json, sha256_file, write_json_atomic

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


def update_manifest(run_dir: str | Path, *, recipe: dict | None = None, stage: str | None = None,
                    seconds: float | None = None, inputs: dict[str, Any] | None = None, **extra) -> dict:
    """Create or update the run's manifest (atomic write). Stage timings accumulate under `stages`."""
    path = Path(run_dir) / "manifest.json"
    m = read_json(path) if path.exists() else {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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
    write_json_atomic(path, m)
    return m
