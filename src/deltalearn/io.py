"""Reading and writing the project's files, with errors that name the file, row and field.

Everything that touches user data on disk goes through here, so that a bad row is reported the same way
everywhere and nothing is half-written: files are written to a temporary name and renamed into place, and
append-only logs are flushed and fsynced line by line so a killed process loses at most the line in flight.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import re
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
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(path, f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})", row=i) from None
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON ({e.msg} at column {e.colno})", row=i) from None
        except RecursionError:
            raise DataError(path, "JSON nested too deeply", row=i) from None
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


# Errors that mean "no room": a full disk, a quota, or a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored).
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_failed(path: str | os.PathLike, e: OSError, *, kept: str = "the previous version (if any) is unchanged"
                 ) -> Exception:
    """The error to raise when writing `path` failed: a DataError saying what was kept when it was lack of space,
    else the original OSError."""
    if e.errno in NO_SPACE:
        return DataError(path, f"could not write it ({e.strerror}: the disk is full or a size limit was hit); "
                         f"{kept}. Free some space and rerun the same command")
    return e


def as_oserror(e: BaseException) -> OSError | None:
    """The OSError inside an exception, also when a native library (safetensors, arrow) wrapped it in its own type
    with only "os error N" in the message."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os error (\d+)", str(e))
    return OSError(int(m.group(1)), os.strerror(int(m.group(1)))) if m else None


class JsonlAppender:
    """Append rows to a JSONL file durably: one write + flush + fsync per row (resumable logs).

    A row that cannot be written whole (disk full) is cut back off, so the file keeps only complete rows."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_torn_tail(self.path)
        self._f = self.path.open("ab", buffering=0)
        self._fsync = fsync

    def write(self, row: dict) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        fd = self._f.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self._fsync:
                os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, start)
            raise write_failed(self.path, e, kept="the rows written before this one are intact") from None

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


def ordinary_permissions(path: str | os.PathLike) -> None:
    """safetensors' save_file (and so transformers' save_pretrained) writes its files 0600, as mkstemp does: give
    a file, or every file under a folder, the mode an ordinary open() gives (0666 less the umask), like the rest of
    a run's files, so a model or checkpoint is as readable as the JSON beside it."""
    path = Path(path)
    mode = 0o666 & ~_umask()
    for f in [path] if path.is_file() else path.rglob("*"):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, mode)


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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_failed(path, e) from None
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
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise DataError(path, "JSON nested too deeply") from None


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
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise DataError(path, f"not a readable Parquet file ({e})") from None
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    raise DataError(path, f"unknown file type '{suffix}' (expected .jsonl, .json, .parquet, .csv, .tsv or a folder)")


_EXTRA = "\0extra"  # DictReader's key for cells beyond the header


def _read_csv(path: Path, delimiter: str) -> list[dict]:
    """CSV/TSV rows as dicts. A row with more cells than the header is a DataError naming it."""
    csv.field_size_limit(1 << 30)  # long responses are legitimate; the default 128 KiB limit is not a data rule
    rows = []
    reader = None
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter, restkey=_EXTRA)
            for row in reader:
                if _EXTRA in row:
                    width = len(reader.fieldnames or [])
                    raise DataError(path, f"{width + len(row[_EXTRA])} cells but the header has {width}",
                                    row=reader.line_num)
                rows.append(row)
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise DataError(path, f"not valid CSV ({e})", row=reader.line_num if reader else None) from None
    return rows


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """A stable hash of a JSON-able object (sorted keys), used for content-addressed caches."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
