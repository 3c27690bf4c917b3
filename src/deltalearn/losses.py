"""Preference losses as pure torch functions (no transformers/accelerate imports).

Every function takes per-sequence log-probs of shape [B] and returns (losses [B], chosen_rewards [B],
rejected_rewards [B]); rewards are detached and are what the metrics call rewards/chosen and rewards/rejected.

Whether a log-prob is a *sum* over response tokens or a per-token *mean* is decided before the loss, by the
loss type's `reduction` (one place: `LossType.reduction`), and checked against the reference cache.
- dpo       (Rafailov et al. 2023, Eq. 7) on summed log-probs; optional cDPO label smoothing.
- dpo_norm  the same DPO loss on per-token *mean* log-probs (Tulu 3 and the delta-learning paper, beta ~5).
- ipo       (Azar et al. 2023, Eq. 17): squared distance of the log-ratio margin from 1/(2 beta), mean log-probs.
- simpo     (Meng et al. 2024, Eq. 6): reference-free, mean log-probs, margin gamma = gamma_beta_ratio * beta.
- sft       NLL of the chosen response (the paper's SFT baseline), handled by `sft_loss`.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F


class LossType(str, enum.Enum):
    dpo = "dpo"
    dpo_norm = "dpo_norm"
    ipo = "ipo"
    simpo = "simpo"
    sft = "sft"

    @property
    def needs_reference(self) -> bool:
        return self in (LossType.dpo, LossType.dpo_norm, LossType.ipo)

    @property
    def reduction(self) -> str:
        """How response-token log-probs become one number per sequence."""
        return "sum" if self is LossType.dpo else "mean"

    @property
    def uses_rejected(self) -> bool:
        return self is not LossType.sft


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float, label_smoothing: float = 0.0):
    """Sigmoid DPO. With label_smoothing eps the target is soft (cDPO): eps=0 is plain DPO."""
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    logits = beta * (chosen_logratio - rejected_logratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float):
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    losses = (chosen_logratio - rejected_logratio - 1 / (2 * beta)) ** 2
    return losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()


def simpo_loss(policy_chosen, policy_rejected, *, beta: float, gamma_beta_ratio: float = 0.5,
               label_smoothing: float = 0.0):
    """SimPO: the implicit reward is beta * mean log-prob, no reference model."""
    logits = beta * (policy_chosen - policy_rejected) - gamma_beta_ratio * beta
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, (beta * policy_chosen).detach(), (beta * policy_rejected).detach()


def sft_loss(chosen_logp_sum: torch.Tensor, chosen_tokens: torch.Tensor, total_tokens: int | float):
    """Token-level NLL: the sum of token log-probs over `total_tokens`, the number of trained tokens in the whole
    global batch, so that any split into micro-batches and processes gives the same gradient."""
    return -chosen_logp_sum.sum() / max(float(total_tokens), 1.0)


def preference_loss(loss_type: LossType | str, policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None,
                    *, beta: float, gamma_beta_ratio: float = 0.5, label_smoothing: float = 0.0):
    """Dispatch on the loss type. Log-probs must already be reduced by `LossType(loss_type).reduction`."""
    lt = LossType(loss_type)
    if lt.needs_reference and (ref_chosen is None or ref_rejected is None):
        raise ValueError(f"loss {lt.value} needs reference log-probs")
    if lt in (LossType.dpo, LossType.dpo_norm):
        return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta,
                        label_smoothing=label_smoothing)
    if lt is LossType.ipo:
        return ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)
    if lt is LossType.simpo:
        return simpo_loss(policy_chosen, policy_rejected, beta=beta, gamma_beta_ratio=gamma_beta_ratio,
                          label_smoothing=label_smoothing)
    raise ValueError("sft is not a pairwise loss; use sft_loss")
