"""End to end on the embedded real model: DPO (dpo_norm) on real pairs raises the policy's preference accuracy."""

import pytest
import torch

from deltalearn.logps import pair_logps
from deltalearn.models import load_model
from deltalearn.recipe import TrainConfig
from deltalearn.train import train


def test_smollm2_preference_accuracy_rises(toy_pairs, tmp_path, smollm2_dir):
    cfg = TrainConfig(model="smollm2-135m", loss="dpo_norm", beta=5.0, lr=2e-5, batch_size=4, micro_batch_size=4,
                      epochs=2, max_len=256, warmup_ratio=0.0, ref_cache_dir=str(tmp_path / "ref"))
    s = train(cfg, toy_pairs, tmp_path / "run", progress=False)
    base, tok = load_model("smollm2-135m")
    tuned, _ = load_model(s["model_dir"])
    c0, r0 = pair_logps(base, tok, toy_pairs, reduction="mean")
    c1, r1 = pair_logps(tuned, tok, toy_pairs, reduction="mean")
    # implicit reward accuracy on the training pairs: chosen's log-ratio beats rejected's
    accuracy = ((c1 - c0) > (r1 - r0)).float().mean().item()
    margin = ((c1 - c0) - (r1 - r0)).mean().item()
    assert accuracy >= 0.75, (accuracy, margin)
    assert margin > 0
    # and the untrained model scores exactly zero margin against itself
    assert torch.allclose(c0 - c0, torch.zeros_like(c0))
