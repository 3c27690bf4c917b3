"""Where a command may write: the one guard every writing command calls before it touches its output.

A command writes only into a folder that is new, empty, or already one of its own artifacts of the same kind.
Each artifact folder carries a marker file, `.deltalearn-artifact`, naming its kind ("run", "generations",
"pairs", "train", "eval": the OUT/eval folder of results). Folders written before markers existed are recognised
by the files only their kind writes (`KNOWN_FILES`: a run's manifest.json, a training run's train_config.json,
...), so resuming an older run keeps working; the marker is added on their first reuse. Anything else -- a
user's folder, another kind's artifact, a file where a folder is expected, an entry that is a symlink leading out
of the folder -- is refused with a DataError (exit 2) naming the folder and what is in it, before anything is
written.

Single-file outputs (a report's HTML, an audit's JSON) go through `claim_file`: the file must be new or one this
command wrote before (recognised by its content).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from deltalearn.io import DataError

MARKER = ".deltalearn-artifact"  # JSON inside, but no .json suffix: code that globs an artifact's *.json skips it

# Files (glob patterns, relative to the folder) by which an artifact from before markers is recognised.
KNOWN_FILES: dict[str, tuple[str, ...]] = {
    "run": ("manifest.json", "results.json", "prompts.jsonl", "arms/*/train_config.json"),
    "generations": ("*.meta.json",),
    "pairs": ("state.json", "pair_summary.json"),
    "train": ("train_config.json", "COMPLETED"),
    "eval": ("*.responses.jsonl",),
}

# Folders (and lock files) that carry nothing of the user's: a folder holding only these counts as empty.
_IGNORABLE = (MARKER,)


class ForeignOutput(DataError):
    """The output path holds something this command did not write."""


def _entries(folder: Path) -> list[str]:
    # another process's marker being written (`mark`'s temporary file) is not the user's: ranks mark at once
    return sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in folder.iterdir()
                  if p.name not in _IGNORABLE and not (p.name.startswith(".") and p.name.endswith(".lock"))
                  and not (p.name.startswith(f".{MARKER}.") and p.name.endswith(".tmp")))


def _listing(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (and {len(names) - n} more)" if len(names) > n else "")


def read_kind(folder: str | os.PathLike) -> str | None:
    """The artifact kind of `folder`: its marker's, else the kind whose known files it holds, else None."""
    folder = Path(folder)
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        if isinstance(info, dict) and isinstance(info.get("kind"), str):
            return info["kind"]
    except (OSError, ValueError):
        pass
    for kind, patterns in KNOWN_FILES.items():
        if any(next(folder.glob(p), None) is not None for p in patterns):
            return kind
    if any(_is_eval_result(p) for p in folder.glob("*.json")):  # an eval folder of results without responses
        return "eval"
    return None


def _is_eval_result(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.lstrip().startswith("{") and '"metrics"' in head


def _escaping_links(folder: Path) -> list[str]:
    """Top-level entries that are symlinks leading out of the folder: writing through them would touch files
    elsewhere."""
    root = folder.resolve()
    bad = []
    for p in folder.iterdir():
        if p.is_symlink():
            target = p.resolve()
            if target != root and root not in target.parents:
                bad.append(f"{p.name} -> {os.readlink(p)}")
    return sorted(bad)


def claim(folder: str | os.PathLike, kind: str, *, also: Iterable[str] = (), flag: str = "--out",
          write: bool = True) -> Path:
    """Check that `folder` may receive a `kind` artifact, create it if new, and mark it (`write=False`: only check,
    as --dry-run does). `also`: other kinds this command may add its files to without replacing anything (eval
    results into a run folder).

    Raises ForeignOutput (nothing written) when the folder is a file, holds someone else's files, is another kind
    of artifact, or has an entry that is a symlink out of it. Returns the folder."""
    folder = Path(folder)
    what = f"{flag} {folder}" if flag else str(folder)
    for above in folder.parents:  # OUT/eval with OUT a file
        if above.exists() and not above.is_dir():
            raise ForeignOutput(above, f"is a file, not a folder; cannot create {folder} for a {kind} artifact")
    if folder.exists() and not folder.is_dir():
        raise ForeignOutput(folder, f"is a file, not a folder; {what} expects a folder for a {kind} artifact: "
                            "give a new or empty folder")
    accepted = (kind, *also)
    found = None
    if folder.is_dir():
        names = _entries(folder)
        if names:
            found = read_kind(folder)
            if found is None:
                raise ForeignOutput(folder, f"holds files deltalearn did not write ({_listing(names)}); refusing "
                                    f"to write a {kind} artifact into it ({what}), nothing was touched. Give a new "
                                    "or empty folder")
            if found not in accepted:
                raise ForeignOutput(folder, f"is a deltalearn {found} folder ({_listing(names)}), not a {kind} "
                                    f"folder; refusing to write into it ({what}), nothing was touched. Give a new "
                                    "or empty folder" + _hint(found, kind))
        links = _escaping_links(folder)
        if links:
            raise ForeignOutput(folder, f"has entries that are symlinks out of it ({_listing(links)}); writing "
                                f"a {kind} artifact there ({what}) would write through them. Give a new folder")
    if write and found in (None, kind):  # a new or empty folder becomes ours; an older artifact gets its marker
        mark(folder, kind)
    return folder


def _hint(found: str, kind: str) -> str:
    if found == "run" and kind in ("pairs", "train", "generations"):
        return f" (a run's own {kind} live inside it, e.g. RUN/pairs, RUN/arms/NAME, RUN/generations)"
    return ""


def mark(folder: str | os.PathLike, kind: str) -> None:
    """Write the marker naming `folder`'s kind (creating the folder). A folder that cannot be written is a
    DataError naming it, raised before any of the command's work."""
    folder = Path(folder)
    path = folder / MARKER
    try:
        if path.exists() and read_kind(folder) == kind:
            return
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{MARKER}.{os.getpid()}.tmp"  # per process: ranks of one run may mark at once
        tmp.write_text(json.dumps({"kind": kind, "written_by": "deltalearn"}) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise ForeignOutput(folder, f"cannot write there ({e.strerror or e}); give a writable folder") from None


def claim_file(path: str | os.PathLike, kind: str, ours: Callable[[str], bool], *, flag: str = "--out") -> Path:
    """A single output file: it must be new, or one this command wrote (`ours(text)` on its first 64 KiB)."""
    path = Path(path)
    if path.is_dir():
        raise ForeignOutput(path, f"is a folder; {flag} expects the {kind} file to write")
    if path.is_symlink() or path.exists():
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.read(65536)
        except OSError as e:
            raise ForeignOutput(path, f"exists and cannot be read ({e.strerror}); give a new file name") from None
        if path.is_symlink() or not ours(head):
            raise ForeignOutput(path, f"exists and is not a deltalearn {kind} (refusing to overwrite it; nothing "
                                "was touched); give a new file name")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ForeignOutput(parent, f"is a file, not a folder; cannot write the {kind} {path.name} inside it")
    return path


# What each file-writing command recognises as its own output.
def is_report_html(text: str) -> bool:
    return "<title>deltalearn report</title>" in text[:2000]


def is_report_md(text: str) -> bool:
    return text.startswith("# deltalearn report")


def is_audit_json(text: str) -> bool:
    # only the head is read, and an audit can be longer: its first key is enough
    return text.lstrip().startswith("{") and '"pairs_path"' in text[:4000]


def is_audit_md(text: str) -> bool:
    return text.startswith("# Audit of ")


def keep_user_entries(old: Path, new: Path, own: Callable[[str], bool]) -> None:
    """Before a folder artifact is replaced by a freshly written one: move every entry of `old` that the artifact
    did not write (`own(name)` is False) into `new`, so replacing the artifact never deletes a user's file."""
    if not old.is_dir():
        return
    for p in old.iterdir():
        if not own(p.name) and not (new / p.name).exists():
            os.replace(p, new / p.name)
