"""One writer per artifact: an exclusive lock beside each thing a stage writes.

`artifact_lock(path)` takes `fcntl.flock` on `<parent>/.<name>.lock` and writes the holder (pid, host, start
time, command) into it. A second process that wants the same artifact is refused at once with a DataError that
names the artifact and the holder, before it does any work. The kernel drops a flock when its process dies, so a
lock left by `kill -9` needs no clean-up: the next run takes it over (and says so). The lock file is unlinked on
release; a waiter that opened the old file notices (its inode no longer matches the path) and retries, so two
processes can never both hold "the" lock through different inodes.

Locks are re-entrant within one process (a `deltalearn run` holds the run folder and then each stage's own
artifact; evaluation locks a result file and then its responses file). flock is advisory and local: it does not
protect a folder shared over NFS between machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from deltalearn.io import DataError

_held: dict[str, int] = {}  # lock path -> nesting depth, for this process
_guard = threading.Lock()


class ArtifactBusy(DataError):
    """Another live process holds the artifact's lock."""


def lock_path(artifact: str | os.PathLike) -> Path:
    p = Path(artifact).absolute()
    return p.parent / f".{p.name}.lock"


def _describe(info: dict) -> str:
    parts = [f"pid {info.get('pid', '?')}", f"on host {info.get('host', '?')}"]
    if info.get("started"):
        parts.append(f"since {info['started']}")
    if info.get("command"):
        parts.append(f"running `{info['command']}`")
    return ", ".join(parts)


def read_holder(lock_file: str | os.PathLike) -> dict:
    """What a lock file says about its (last) holder; {} when unreadable or empty."""
    try:
        with open(lock_file, encoding="utf-8") as f:
            info = json.loads(f.read() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _open_locked(lp: Path, wait: bool) -> tuple[int, dict]:
    """Open + flock the lock file, retrying when it was unlinked/replaced under us. Returns (fd, stale info)."""
    while True:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lp).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released (unlinked) between our open and our flock: try the new file
            os.close(fd)
            continue
        raw = os.pread(fd, 4096, 0)
        try:
            stale = json.loads(raw) if raw.strip() else {}
        except ValueError:
            stale = {"unreadable": raw[:80].decode(errors="replace")}
        return fd, stale if isinstance(stale, dict) else {}


@contextlib.contextmanager
def artifact_lock(artifact: str | os.PathLike, *, what: str = "artifact", wait: bool = False,
                  quiet: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of `artifact` (a file or folder, existing or not) for the `with` block.

    wait=False: refuse at once (ArtifactBusy) when another process holds it. wait=True: block until it is free
    (for shared caches, where the other process is producing exactly what we need).
    """
    lp = lock_path(artifact)
    key = str(lp)
    with _guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield lp
        finally:
            with _guard:
                _held[key] -= 1
        return
    lp.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, stale = _open_locked(lp, wait=False)
    except BlockingIOError:
        holder = read_holder(lp)
        if not wait:
            raise ArtifactBusy(artifact, f"{what} is in use by another process ({_describe(holder)}); wait for it "
                               f"to finish or stop it. A process killed with kill -9 releases the lock "
                               f"({lp.name}) by itself") from None
        if not quiet:
            print(f"waiting for {what} {artifact}: in use by {_describe(holder)}", file=sys.stderr, flush=True)
        fd, stale = _open_locked(lp, wait=True)
    if stale.get("pid") and not quiet:
        # The previous holder died without releasing (kill -9, power loss): the kernel freed its flock.
        print(f"note: took over the lock of {what} {artifact} left by {_describe(stale)}, which is no longer "
              "running", file=sys.stderr, flush=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)[:300],
            "artifact": str(artifact)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    with _guard:
        _held[key] = 1
    try:
        yield lp
    finally:
        with _guard:
            _held.pop(key, None)
        # Unlink while still holding the lock, then close: a waiter on this inode sees the mismatch and retries.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lp)
        os.close(fd)
