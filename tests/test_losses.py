"""Losses: hand-computed values and the equivalences the literature promises."""

import math

import pytest
import torch

from deltalearn.logps import reduce_logps
from deltalearn.losses import LossType, dpo_loss, ipo_loss, preference_loss, sft_loss, simpo_loss


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_dpo_hand_computed():
    # margins: chosen log-ratio 0.5, rejected -0.5; beta 0.1 -> logits 0.1 -> loss = log(1 + e^-0.1)
    losses, rc, rr = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.1)), abs=1e-12)
    assert rc.item() == pytest.approx(0.05) and rr.item() == pytest.approx(-0.05)
    assert not rc.requires_grad


def test_label_smoothing_hand_computed_and_zero_is_plain():
    plain, _, _ = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1)
    zero, _, _ = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, label_smoothing=0.0)
    assert torch.equal(plain, zero)
    smooth, _, _ = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, label_smoothing=0.1)
    expected = 0.9 * math.log(1 + math.exp(-0.1)) + 0.1 * math.log(1 + math.exp(0.1))
    assert smooth.item() == pytest.approx(expected, abs=1e-12)


def test_ipo_hand_computed():
    losses, _, _ = ipo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1)
    assert losses.item() == pytest.approx((1.0 - 5.0) ** 2)


def test_simpo_hand_computed():
    # beta 2, gamma = 0.5 * 2 = 1: logits = 2 * (-1 - -2) - 1 = 1
    losses, rc, rr = simpo_loss(t(-1.0), t(-2.0), beta=2.0, gamma_beta_ratio=0.5)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-12)
    assert rc.item() == pytest.approx(-2.0) and rr.item() == pytest.approx(-4.0)


def test_dpo_norm_is_dpo_on_mean_logps():
    sums_c, n_c = t(-12.0, -30.0), t(4.0, 10.0)
    sums_r, n_r = t(-20.0, -9.0), t(5.0, 3.0)
    ref_c, ref_r = t(-10.0, -35.0), t(-18.0, -8.0)
    lt = LossType("dpo_norm")
    assert lt.reduction == "mean" and LossType("dpo").reduction == "sum"
    got, _, _ = preference_loss(lt, reduce_logps(sums_c, n_c, lt.reduction), reduce_logps(sums_r, n_r, lt.reduction),
                                reduce_logps(ref_c, n_c, lt.reduction), reduce_logps(ref_r, n_r, lt.reduction), beta=5.0)
    want, _, _ = dpo_loss(sums_c / n_c, sums_r / n_r, ref_c / n_c, ref_r / n_r, beta=5.0)
    assert torch.allclose(got, want)
    summed, _, _ = preference_loss("dpo", sums_c, sums_r, ref_c, ref_r, beta=5.0)
    assert not torch.allclose(got, summed)  # the reduction really changes the loss


def test_simpo_with_zero_gamma_is_reference_free_dpo_norm():
    pc, pr = t(-1.2, -0.4), t(-1.9, -0.3)
    s, _, _ = simpo_loss(pc, pr, beta=3.0, gamma_beta_ratio=0.0)
    d, _, _ = dpo_loss(pc, pr, torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), beta=3.0)
    assert torch.allclose(s, d)


def test_sft_is_token_mean_over_global_batch():
    assert sft_loss(t(-4.0, -6.0), t(2.0, 3.0), total_tokens=5).item() == pytest.approx(2.0)
    # split into two micro-batches: the parts add up to the whole
    a = sft_loss(t(-4.0), t(2.0), total_tokens=5) + sft_loss(t(-6.0), t(3.0), total_tokens=5)
    assert a.item() == pytest.approx(2.0)


def test_reference_required_and_sft_not_pairwise():
    with pytest.raises(ValueError, match="reference"):
        preference_loss("dpo", t(-1.0), t(-2.0), beta=0.1)
    with pytest.raises(ValueError, match="sft"):
        preference_loss("sft", t(-1.0), t(-2.0), beta=0.1)
    assert LossType("simpo").needs_reference is False and LossType("ipo").needs_reference is True


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = t(-1.0).requires_grad_(), t(-1.0).requires_grad_()
    losses, _, _ = dpo_loss(pc, pr, t(-1.0), t(-1.0), beta=1.0)
    losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()
