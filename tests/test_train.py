"""The training loop on real (tiny) models: it learns, the result depends only on the global batch, it resumes
exactly, the reference cache is reused and checked, and 2 processes match 1."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deltalearn import refcache
from deltalearn.io import DataError
from deltalearn.recipe import ConfigError, TrainConfig
from deltalearn.train import train


def cfg(model, tmp_path, **kw):
    # fp32 unless a test says otherwise: these are exactness tests, and what `auto` means depends on the CPU
    base = dict(model=model, loss="dpo_norm", lr=1e-3, batch_size=4, micro_batch_size=2, max_len=128, epochs=2,
                ref_cache_dir=str(tmp_path / "refcache"), precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def weights(out):
    return load_file(str(Path(out) / "model" / "model.safetensors"))


def test_dpo_norm_learns_and_writes_artifacts(tiny_model_dir, toy_pairs, tmp_path):
    out = tmp_path / "run"
    s = train(cfg(tiny_model_dir, tmp_path), toy_pairs, out, progress=False)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and s["steps"] == 4
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["rewards/margin"] > 0
    assert rows[-1]["rewards/accuracy"] > 0.5
    assert (out / "COMPLETED").exists() and (out / "model" / "model.safetensors").exists()
    # safetensors writes 0600; the model, checkpoints and reference cache are readable like the JSON beside them
    umask = os.umask(0)
    os.umask(umask)
    files = [f for d in (out, tmp_path / "refcache") for f in d.rglob("*") if f.is_file()]
    assert any(f.suffix == ".safetensors" for f in files) and (tmp_path / "refcache").is_dir()
    assert {f.relative_to(tmp_path).as_posix(): oct(f.stat().st_mode & 0o777) for f in files
            if f.stat().st_mode & 0o777 != 0o666 & ~umask} == {}
    before = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    after = weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # a finished run is a cached artifact: rerunning returns the saved summary and does not train again
    mtime = (out / "metrics.jsonl").stat().st_mtime_ns
    again = train(cfg(tiny_model_dir, tmp_path), toy_pairs, out, progress=False)
    assert again.pop("skipped") is True and again == s
    assert (out / "metrics.jsonl").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo", "sft"])
def test_every_loss_trains(tiny_model_dir, toy_pairs, tmp_path, loss):
    out = tmp_path / loss
    train(cfg(tiny_model_dir, tmp_path, loss=loss, epochs=1, max_steps=3), toy_pairs, out, progress=False)
    rows = metrics(out)
    assert len(rows) == 3 and rows[-1]["loss"] < rows[0]["loss"]


def test_result_depends_only_on_global_batch(tiny_model_dir, toy_pairs, tmp_path):
    a, b = tmp_path / "4x1", tmp_path / "1x4"
    train(cfg(tiny_model_dir, tmp_path, micro_batch_size=4), toy_pairs, a, progress=False)
    train(cfg(tiny_model_dir, tmp_path, micro_batch_size=1), toy_pairs, b, progress=False)
    for ra, rb in zip(metrics(a), metrics(b)):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6)
        assert ra["rewards/margin"] == pytest.approx(rb["rewards/margin"], rel=1e-4, abs=1e-6)
        # Adam and clipping hide a wrongly scaled gradient in the weights; the pre-clip norm does not
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)
    wa, wb = weights(a), weights(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_continues_the_loss_curve_exactly(tiny_model_dir, toy_pairs, tmp_path, precision):
    """A resumed run replays the same micro-batches in the same shapes, so it is bit-exact in bf16 too."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    c = cfg(tiny_model_dir, tmp_path, save_every=2, epochs=3, precision=precision)
    train(c, toy_pairs, full, progress=False)
    train(c, toy_pairs, cut, progress=False)
    # Make `cut` look like a run killed after step 3 (checkpoint at 2, metrics logged to 3, a torn line)
    shutil.rmtree(cut / "model")
    (cut / "COMPLETED").unlink()
    shutil.rmtree(cut / "checkpoints" / "step-4")
    rows = metrics(cut)[:3]
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    s = train(c, toy_pairs, cut, progress=False)
    assert s["resumed_from"] == 2
    got, want = metrics(cut), metrics(full)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]  # nothing lost, nothing duplicated
    assert [r["loss"] for r in got] == [r["loss"] for r in want]
    wa, wb = weights(cut), weights(full)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_rerun_into_a_folder_refuses_other_settings_or_data(tiny_model_dir, toy_pairs, tmp_path):
    """A finished or interrupted run is never reused or resumed under another config or other pairs: the error
    names each differing setting (issue 17 item 1; issue 16 defect 7)."""
    out = tmp_path / "run"
    c = cfg(tiny_model_dir, tmp_path, save_every=2, epochs=2)
    train(c, toy_pairs, out, progress=False)
    with pytest.raises(DataError, match=r"finished run .*loss: folder has 'dpo_norm', this run 'sft'.*lr: folder "
                       r"has 0.001, this run 9e-05"):
        train(cfg(tiny_model_dir, tmp_path, save_every=2, epochs=2, loss="sft", lr=9e-5), toy_pairs, out,
              progress=False)
    other = [dict(r) for r in toy_pairs]
    other[0]["prompt"] = "an edited prompt"
    with pytest.raises(DataError, match="pairs_sha256: folder has"):
        train(c, other, out, progress=False)
    # only logging / memory settings may change on a rerun: still the same run, skipped
    assert train(cfg(tiny_model_dir, tmp_path, save_every=1, epochs=2, micro_batch_size=1), toy_pairs, out,
                 progress=False)["skipped"] is True
    # an interrupted run (checkpoint at step 2, no COMPLETED) is not resumed with another loss/lr either
    (out / "COMPLETED").unlink()
    shutil.rmtree(out / "model")
    with pytest.raises(DataError, match=r"unfinished run .*refusing to resume.*loss: folder has 'dpo_norm'"):
        train(cfg(tiny_model_dir, tmp_path, save_every=2, epochs=2, loss="sft", lr=9e-5), toy_pairs, out,
              progress=False)
    assert json.loads((out / "train_config.json").read_text())["loss"] == "dpo_norm"  # not rewritten
    assert train(c, toy_pairs, out, progress=False)["resumed_from"] == 2  # the same config resumes


def test_bad_resume_path_is_an_error(tiny_model_dir, toy_pairs, tmp_path):
    with pytest.raises(ConfigError, match="resume path does not exist"):
        train(cfg(tiny_model_dir, tmp_path), toy_pairs, tmp_path / "x", resume=tmp_path / "nope", progress=False)


def test_reference_cache_is_reused_and_hash_sensitive(tiny_model_dir, toy_pairs, tmp_path):
    s1 = train(cfg(tiny_model_dir, tmp_path, max_steps=1), toy_pairs, tmp_path / "a", progress=False)
    s2 = train(cfg(tiny_model_dir, tmp_path, max_steps=1, lr=5e-4, loss="dpo"), toy_pairs, tmp_path / "b",
               progress=False)
    assert not s1["ref_cache_hit"] and s2["ref_cache_hit"] and s1["ref_cache"] == s2["ref_cache"]
    s3 = train(cfg(tiny_model_dir, tmp_path, max_steps=1, max_len=40), toy_pairs, tmp_path / "c", progress=False)
    assert s3["ref_cache"] != s1["ref_cache"]  # different truncation -> different token ids -> different key
    # a cache with a hole is an error, not a silent zero
    t = load_file(s1["ref_cache"])
    t["rejected_sum"][3] = float("-inf")
    refcache.save(Path(s1["ref_cache"]), t, {})
    with pytest.raises(ValueError, match="1 rows without values"):
        train(cfg(tiny_model_dir, tmp_path, max_steps=1), toy_pairs, tmp_path / "d", progress=False)


def test_live_reference_matches_cached(tiny_model_dir, toy_pairs, tmp_path):
    train(cfg(tiny_model_dir, tmp_path, max_steps=2), toy_pairs, tmp_path / "cached", progress=False)
    train(cfg(tiny_model_dir, tmp_path, max_steps=2, ref_cache=False), toy_pairs, tmp_path / "live", progress=False)
    for a, b in zip(metrics(tmp_path / "cached"), metrics(tmp_path / "live")):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_lora_trains_adapters_against_the_base(tiny_model_dir, toy_pairs, tmp_path):
    from deltalearn.recipe import LoraConfig

    out = tmp_path / "lora"
    c = cfg(tiny_model_dir, tmp_path, lr=1e-2, max_steps=3, lora=LoraConfig(r=4, alpha=8))
    train(c, toy_pairs, out, progress=False)
    assert (out / "adapter" / "adapter_config.json").exists()
    rows = metrics(out)
    assert rows[-1]["loss"] < rows[0]["loss"]
    # with the cache off, the reference is the base model with adapters disabled: same step-1 loss (log 2)
    train(cfg(tiny_model_dir, tmp_path, lr=1e-2, max_steps=1, lora=LoraConfig(r=4, alpha=8), ref_cache=False),
          toy_pairs, tmp_path / "lora-live", progress=False)
    assert metrics(tmp_path / "lora-live")[0]["loss"] == pytest.approx(0.6931, abs=1e-4)


def test_too_few_pairs_and_bad_rows_are_clear_errors(tiny_model_dir, toy_pairs, tmp_path):
    with pytest.raises(DataError, match="fewer than one global batch"):
        train(cfg(tiny_model_dir, tmp_path, batch_size=16, micro_batch_size=4), toy_pairs, tmp_path / "x",
              progress=False)
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps(toy_pairs[0]) + "\n" + '{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl, row 2, field 'rejected'"):
        train(cfg(tiny_model_dir, tmp_path), str(p), tmp_path / "y", progress=False)
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        train(cfg(tiny_model_dir, tmp_path, batch_size=6, micro_batch_size=4), toy_pairs, tmp_path / "z",
              progress=False)


def test_two_processes_match_one(tiny_model_dir, toy_pairs, tmp_path):
    """Data parallel over 2 CPU processes (gloo) gives the single-process result for the same global batch."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs))
    common = ["--pairs", str(pairs), "--model", tiny_model_dir, "--no-progress",
              "--set", "train.lr=0.001", "--set", "train.batch_size=4", "--set", "train.micro_batch_size=1",
              "--set", "train.max_len=128", "--set", "train.epochs=2",
              "--set", f"train.ref_cache_dir={tmp_path / 'refcache'}", "--set", "train.precision=fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "deltalearn.cli", "train", "--out", str(tmp_path / "one"), *common],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                          "-m", "deltalearn.cli", "train", "--out", str(tmp_path / "two"), *common],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["processes"] == 2
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/accuracy"] == b["rewards/accuracy"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)  # the all-reduce scale is right
    wa, wb = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
