"""Corruption caught, never trained on: checkpoints, the reference cache and run manifests carry content hashes;
a truncated or altered file is an error naming the file and what failed; a resume from a corrupt checkpoint
falls back to the previous good one only when asked (--fallback-checkpoint)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deltalearn import refcache
from deltalearn.io import DataError
from deltalearn.manifest import read_manifest, update_manifest
from deltalearn.recipe import TrainConfig
from deltalearn.train import CorruptCheckpoint, train, verify_checkpoint


def flip_byte(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """A finished 4-step run with a checkpoint after every step: the reference weights."""
    from conftest import toy_pair_rows

    d = tmp_path_factory.mktemp("corruption")
    cfg = TrainConfig(model=tiny_model_dir, loss="dpo", batch_size=4, micro_batch_size=2, max_len=64, max_steps=4,
                      save_every=1, keep_checkpoints=0, precision="fp32", ref_cache_dir=str(d / "ref"))
    train(cfg, toy_pair_rows(), d / "full", progress=False)
    return cfg, d / "full"


@pytest.fixture()
def killed_after_step2(finished_run, tmp_path):
    """A copy of the finished run that looks killed right after step 2's checkpoint."""
    cfg, full = finished_run
    run = tmp_path / "run"
    shutil.copytree(full, run)
    for name in ("COMPLETED", "train_summary.json"):
        (run / name).unlink()
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "step-3")
    return cfg, full, run


@pytest.mark.parametrize("damage,file,what", [(flip_byte, "trainable.safetensors", "content hash mismatch"),
                                              (truncate, "optimizer.safetensors", "content hash mismatch"),
                                              (truncate, "hashes.json", "unreadable")])
def test_corrupt_checkpoint_is_refused_naming_the_file(killed_after_step2, toy_pairs, damage, file, what):
    cfg, _, run = killed_after_step2
    damage(run / "checkpoints" / "step-2" / file)
    with pytest.raises(CorruptCheckpoint) as e:
        train(cfg, toy_pairs, run, progress=False)
    msg = str(e.value)
    assert str(run / "checkpoints" / "step-2" / file) in msg and what in msg and "--fallback-checkpoint" in msg
    assert "step-1" in msg  # names the good checkpoint it could fall back to
    assert not (run / "model").exists() and not (run / "COMPLETED").exists()  # nothing was trained


def test_missing_checkpoint_file_is_refused(killed_after_step2, toy_pairs):
    cfg, _, run = killed_after_step2
    (run / "checkpoints" / "step-2" / "rng_0.safetensors").unlink()
    with pytest.raises(CorruptCheckpoint, match="rng_0.safetensors: missing from the checkpoint"):
        verify_checkpoint(run / "checkpoints" / "step-2")


def test_fallback_to_previous_good_checkpoint_only_when_asked(killed_after_step2, toy_pairs, capfd):
    cfg, full, run = killed_after_step2
    flip_byte(run / "checkpoints" / "step-2" / "trainable.safetensors")
    s = train(cfg, toy_pairs, run, progress=False, fallback=True)
    assert s["resumed_from"] == 1
    assert (run / "checkpoints" / "corrupt-step-2").is_dir()  # set aside for inspection, not deleted
    assert "falling back" in capfd.readouterr().out
    # resumed from step 1 with its exact state: the result is the uninterrupted run's, bit for bit
    a, b = load_file(str(run / "model" / "model.safetensors")), load_file(str(full / "model" / "model.safetensors"))
    assert all(a[k].equal(b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_reference_cache_damage_is_caught(tmp_path):
    path = tmp_path / "cache.safetensors"
    t = {k: torch.randn(6) for k in ("chosen_sum", "rejected_sum")} | {k: torch.ones(6) for k in
                                                                        ("chosen_n", "rejected_n")}
    refcache.save(path, t, {"model": "m"})
    assert refcache.load(path, 6)["chosen_sum"].equal(t["chosen_sum"])
    good = path.read_bytes()
    flip_byte(path, at=0.97)  # inside the tensor data, after the header
    with pytest.raises(DataError, match="content hash mismatch") as e:
        refcache.load(path, 6)
    assert str(path) in str(e.value) and "delete it to recompute" in str(e.value)
    path.write_bytes(good[: len(good) - 10])
    with pytest.raises(DataError, match="unreadable") as e:
        refcache.load(path, 6)
    assert str(path) in str(e.value)


def test_manifest_damage_is_caught(tmp_path):
    from deltalearn.report import load_run

    run = tmp_path / "run"
    update_manifest(run, recipe={"name": "x", "seed": 3}, stage="train", seconds=1.0)
    m = read_manifest(run / "manifest.json")
    assert m["seed"] == 3
    edited = json.loads((run / "manifest.json").read_text())
    edited["seed"] = 4
    (run / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(DataError, match="content hash mismatch") as e:
        read_manifest(run / "manifest.json")
    assert str(run / "manifest.json") in str(e.value)
    assert any("content hash mismatch" in p for p in load_run(run).problems)  # the report flags it
    with pytest.raises(DataError, match="content hash mismatch"):
        update_manifest(run, stage="eval", seconds=1.0)  # and no stage writes over it
    truncate(run / "manifest.json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_manifest(run / "manifest.json")
