"""Reading and writing the project's files, with errors that name the file, row and field.

Everything that touches user data on disk goes through here, so that a bad row is reported the same way
everywhere and nothing is half-written: files are written to a temporary name and renamed into place, and
append-only logs are flushed and fsynced line by line so a killed process loses at most the line in flight.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """Bad input. The message always says where: file, row (1-based line or row number) and field."""

    def __init__(self, path: str | os.PathLike | None, message: str, *, row: int | None = None,
                 field: str | None = None):
        self.path = str(path) if path is not None else None
        self.row = row
        self.field = field
        where = []
        if self.path:
            where.append(self.path)
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line. A line that is not a JSON object is a DataError.

    A final line without a newline is a torn write (a killed appender): it is reported, never parsed as data.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    with path.open("rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if torn and i == len(lines):
            raise DataError(path, "last line is incomplete (no trailing newline); the writer was interrupted. "
                            "Use read_jsonl(..., repair_tail=True) to drop it", row=i)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON ({e.msg} at column {e.colno})", row=i) from None
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", row=i)
        yield i, obj


def read_jsonl(path: str | os.PathLike, *, repair_tail: bool = False) -> list[dict]:
    """All rows of a JSONL file. With repair_tail, a torn final line (from a kill) is cut off the file first."""
    if repair_tail:
        truncate_torn_tail(path)
    return [obj for _, obj in iter_jsonl(path)]


def truncate_torn_tail(path: str | os.PathLike) -> int:
    """Cut an incomplete final line (no trailing newline) off an append-only JSONL file. Returns bytes cut."""
    path = Path(path)
    if not path.exists():
        return 0
    with path.open("rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        return len(data) - keep


class JsonlAppender:
    """Append rows to a JSONL file durably: one write + flush + fsync per row (resumable logs)."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_torn_tail(self.path)
        self._f = self.path.open("ab")
        self._fsync = fsync

    def write(self, row: dict) -> None:
        self._f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a whole file or nothing: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it the mode an ordinary open() would (0666 less the umask)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def read_table(path: str | os.PathLike) -> list[dict]:
    """Rows from JSONL, JSON (a list of objects), Parquet, CSV, or a `datasets` folder saved with save_to_disk."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - re-raised with the path
            raise DataError(path, f"not a dataset saved with save_to_disk ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(path, f"a DatasetDict without a 'train' split (splits: {list(ds)})")
            ds = ds["train"]
        return ds.to_list()
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        obj = read_json(path)
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise DataError(path, "expected a JSON list of objects")
        return obj
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    raise DataError(path, f"unknown file type '{suffix}' (expected .jsonl, .json, .parquet, .csv, .tsv or a folder)")


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """A stable hash of a JSON-able object (sorted keys), used for content-addressed caches."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
