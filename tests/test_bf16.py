"""The bf16 path on every machine kind: precision is pinned here, never left to what `auto` resolves to on the CPU
at hand (tiny models, so emulated bf16 on AVX2-only CPUs stays affordable).

Tolerances: bf16 keeps 8 bits of mantissa (relative rounding ~4e-3 per value). Losses are means over pairs of
log-prob differences computed through a few rounded matmuls, so bf16 and fp32 agree to ~1e-2 over a few steps of a
tiny model, not to 1e-6. Where the same computation runs in the same shapes (a resumed run replays the same
micro-batches), bf16 is deterministic and the comparison is exact.
"""

import json
import math

import pytest
import torch

from deltalearn.recipe import TrainConfig
from deltalearn.train import train
from test_train import cfg as train_cfg, metrics, weights


def cfg(model, tmp_path, **kw):
    """test_train's training config with bf16 pinned (unless a test says otherwise)."""
    return train_cfg(model, tmp_path, **{"precision": "bf16", **kw})


def test_bf16_is_autocast_over_fp32_master_weights(tiny_model_dir, toy_pairs, tmp_path):
    # save_dtype fp32: the saved weights are the master weights themselves (the default, auto, saves bf16 after
    # bf16 training: tests/test_cards.py)
    s = train(cfg(tiny_model_dir, tmp_path, save_dtype="fp32"), toy_pairs, tmp_path / "bf16", progress=False)
    f = train(cfg(tiny_model_dir, tmp_path, precision="fp32"), toy_pairs, tmp_path / "fp32", progress=False)
    assert s["precision"] == "bf16" and f["precision"] == "fp32"
    assert json.loads((tmp_path / "bf16" / "train_config.json").read_text())["precision_resolved"] == "bf16"
    # master weights stay fp32: what Adam updated is fp32
    assert all(t.dtype == torch.float32 for t in weights(tmp_path / "bf16").values())
    # the matmuls really ran in bf16: the curves differ (fp32 would reproduce itself exactly) ...
    lb, lf = metrics(tmp_path / "bf16"), metrics(tmp_path / "fp32")
    assert any(a["loss"] != b["loss"] for a, b in zip(lb, lf))
    # ... but stay finite and close: 4 steps of a tiny model at lr 1e-3
    for a, b in zip(lb, lf):
        assert torch.isfinite(torch.tensor([a["loss"], a["grad_norm"]])).all()
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-2), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=0.1), a["step"]


def test_auto_follows_the_native_bf16_switch(tiny_model_dir, toy_pairs, tmp_path, monkeypatch):
    """DELTALEARN_NATIVE_BF16 reaches the training loop: `auto` trains exactly as bf16 when forced on, as fp32 off."""
    monkeypatch.setenv("DELTALEARN_NATIVE_BF16", "1")
    a = train(cfg(tiny_model_dir, tmp_path, precision="auto", max_steps=2), toy_pairs, tmp_path / "a1",
              progress=False)
    b = train(cfg(tiny_model_dir, tmp_path, max_steps=2), toy_pairs, tmp_path / "b", progress=False)
    assert a["precision"] == "bf16" and [r["loss"] for r in metrics(tmp_path / "a1")] == \
        [r["loss"] for r in metrics(tmp_path / "b")]
    monkeypatch.setenv("DELTALEARN_NATIVE_BF16", "0")
    c = train(cfg(tiny_model_dir, tmp_path, precision="auto", max_steps=2), toy_pairs, tmp_path / "a0",
              progress=False)
    assert c["precision"] == "fp32"


def test_bf16_first_loss_is_ln2(tiny_model_dir, toy_pairs, tmp_path):
    """Policy == reference at step 1, so DPO's first loss is ln 2 in bf16 as in fp32 (the cached reference and the
    policy's first forward must see the same numerics, not only the same weights). The reference pass replays the
    training's micro-batches in bf16, so the margins are exactly 0 (scored in length-sorted batches instead, this
    tiny model's first dpo_norm loss was 0.693095 and its margin 1e-4)."""
    for loss in ("dpo", "dpo_norm"):
        train(cfg(tiny_model_dir, tmp_path, loss=loss, max_steps=1), toy_pairs, tmp_path / loss, progress=False)
        first = metrics(tmp_path / loss)[0]
        assert first["rewards/margin"] == 0.0 and first["rewards/chosen"] == 0.0, loss
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-7), loss


def test_bf16_global_batch_split_within_tolerance(tiny_model_dir, toy_pairs, tmp_path):
    a, b = tmp_path / "4x1", tmp_path / "1x4"
    train(cfg(tiny_model_dir, tmp_path, micro_batch_size=4), toy_pairs, a, progress=False)
    train(cfg(tiny_model_dir, tmp_path, micro_batch_size=1), toy_pairs, b, progress=False)
    for ra, rb in zip(metrics(a), metrics(b)):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-2)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=0.05)
    wa, wb = weights(a), weights(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-2) for k in wa)


def test_reference_layout_scores_each_pair_once_where_training_first_meets_it():
    from types import SimpleNamespace

    from deltalearn.train import micro_batches, reference_layout, step_indices

    enc = [SimpleNamespace(chosen=[0] * (i % 5 + 1), rejected=[0] * (i % 3 + 1)) for i in range(11)]
    c = TrainConfig(model="m", batch_size=4, micro_batch_size=1, seed=3)
    for world, steps in ((1, 5), (2, 5), (2, 1)):
        layout = reference_layout(enc, c, steps, world)
        kept = [i for rank in layout for _, keep in rank for i in keep]
        assert sorted(kept) == list(range(11))  # every pair once, none twice, across ranks
        # step 1's micro-batches are scored exactly as the loop builds them, on the rank that trains them
        first = step_indices(11, 4, 0, 3, True)
        for rank in range(world):
            mbs = micro_batches(enc, first, rank, world, 1)
            assert [mb for mb, _ in layout[rank][:len(mbs)]] == mbs
