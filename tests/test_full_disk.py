"""Full disk: a write that fails for lack of space leaves the previous artifact intact and says so.

Two ways to run out of space, both real: a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored the kernel fails the
write with EFBIG) in a child process, which works for any user; and, where this user may mount, a 1 MiB tmpfs
(the kernel fails the write with ENOSPC)."""

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")
TESTS = str(Path(__file__).resolve().parent)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")])}

LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us instead of failing the write
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from deltalearn.io import DataError
try:
{body}
except DataError as e:
    print("DataError:", e)
    sys.exit(3)
print("no error")
"""


def run_limited(body: str, limit: int, **fmt) -> subprocess.CompletedProcess:
    code = LIMITED.format(limit=limit, body=textwrap.indent(textwrap.dedent(body).format(**fmt), "    "))
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)


def test_atomic_write_over_a_size_limit_keeps_the_old_file(tmp_path):
    f = tmp_path / "manifest.json"
    f.write_text('{"old": true}\n')
    r = run_limited("""
        from deltalearn.io import write_json_atomic
        write_json_atomic({path!r}, {{"big": "x" * 100000}})
    """, 4096, path=str(f))
    assert r.returncode == 3, r.stdout + r.stderr
    assert str(f) in r.stdout and "previous version" in r.stdout and "unchanged" in r.stdout
    assert json.loads(f.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left behind


def test_appender_keeps_only_complete_rows_when_space_runs_out(tmp_path):
    from deltalearn.io import JsonlAppender, read_jsonl

    f = tmp_path / "gens.jsonl"
    with JsonlAppender(f) as a:
        a.write({"id": "a", "response": "one"})
        a.write({"id": "b", "response": "two"})
    size = f.stat().st_size
    r = run_limited("""
        from deltalearn.io import JsonlAppender
        with JsonlAppender({path!r}) as a:
            a.write({{"id": "c", "response": "y" * 5000}})
    """, size + 100, path=str(f))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "rows written before this one are intact" in r.stdout
    assert f.stat().st_size == size and [x["id"] for x in read_jsonl(f)] == ["a", "b"]  # no torn half row


def test_checkpoint_save_over_a_size_limit_keeps_earlier_checkpoints(tmp_path, tiny_model_dir, toy_pairs):
    """A run whose checkpoint write fails keeps its earlier checkpoint intact (verified by its hashes)."""
    import shutil

    from deltalearn.recipe import TrainConfig
    from deltalearn.train import latest_checkpoint, train, verify_checkpoint

    out = tmp_path / "run"
    cfg = dict(model=tiny_model_dir, loss="dpo", batch_size=4, micro_batch_size=2, max_len=64, max_steps=3,
               save_every=1, precision="fp32", ref_cache_dir=str(tmp_path / "ref"))
    train(TrainConfig(**cfg), toy_pairs, out, progress=False)
    # make it look killed right after step 1's checkpoint: the rerun must write step-2's
    for name in ("COMPLETED", "train_summary.json"):
        (out / name).unlink()
    shutil.rmtree(out / "model")
    shutil.rmtree(out / "checkpoints" / "step-2")
    step1 = out / "checkpoints" / "step-1"
    biggest = max(f.stat().st_size for f in step1.iterdir())
    r = run_limited("""
        from deltalearn.recipe import TrainConfig
        from deltalearn.train import train
        from conftest import toy_pair_rows
        train(TrainConfig(**{cfg}), toy_pair_rows(), {out!r}, progress=False)
    """, biggest // 2, cfg=repr(cfg), out=str(out))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "step-2" in r.stdout and "earlier checkpoints are intact" in r.stdout
    assert latest_checkpoint(out) == step1 and not (out / "checkpoints" / "step-2.tmp").exists()
    verify_checkpoint(step1)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"deltalearn-test-{uuid.uuid4().hex[:6]}",
                        str(where)], capture_output=True)
    return r.returncode == 0


def test_full_tmpfs_keeps_artifacts_intact(tmp_path):
    """A real full file system (ENOSPC): the generations log keeps its rows, a rewritten JSON keeps its old
    content, and each error says what was kept."""
    from deltalearn.io import DataError, JsonlAppender, read_jsonl, write_json_atomic

    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE tests cover the same paths")
    try:
        summary = disk / "summary.json"
        write_json_atomic(summary, {"v": 1})
        log = disk / "gens.jsonl"
        with JsonlAppender(log, fsync=False) as a:
            a.write({"id": "a", "response": "ok"})
            with pytest.raises(DataError, match="rows written before this one are intact"):
                for i in range(10_000):  # fill the disk
                    a.write({"id": f"r{i}", "response": "z" * 4000})
        rows = read_jsonl(log)  # only complete rows, no torn tail
        assert rows[0]["id"] == "a" and all(len(r["response"]) == 4000 for r in rows[1:])
        with pytest.raises(DataError, match="No space left on device.*previous version"):
            write_json_atomic(summary, {"v": 2, "pad": "p" * 100_000})
        assert json.loads(summary.read_text()) == {"v": 1}
    finally:
        subprocess.run(["umount", str(disk)], check=False)
