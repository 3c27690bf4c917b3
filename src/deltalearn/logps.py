"""Per-sequence log-probs of response tokens: the one place where logits become the numbers the losses see.

Two paths compute the same thing:
- `sequence_logps(logits, input_ids, loss_mask, reduction)`: from full [B, L, V] logits (simple, for any head).
- `ResponseLogProbs`: the lean path used for training and the reference pass. It runs the decoder, keeps hidden
  states only at response positions, and applies the LM head there in chunks with log-softmax fused into the
  gather (`_LinearLogProb`), so no [B, L, V] tensor is ever made: memory no longer scales with vocab x length
  (the full-vocab logits were most of the peak memory of a plain DPO step; see benchmarks/).

Position t's logits predict token t+1, so a token is scored when `loss_mask` is true at its own position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class SeqBatch:
    input_ids: torch.Tensor  # [n, L] long, right-padded
    attention_mask: torch.Tensor  # [n, L] long
    loss_mask: torch.Tensor  # [n, L] bool: True at response tokens that are trained

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device) -> "SeqBatch":
        return SeqBatch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device))

    def as_kwargs(self) -> dict:
        """The ResponseLogProbs arguments (a packing.PackedBatch gives its own)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "loss_mask": self.loss_mask}


def collate(seqs: list[tuple[list[int], list[int]]], pad_id: int) -> SeqBatch:
    """(prompt_ids, response_ids) pairs -> a right-padded batch. Right padding keeps every real token's position
    and attention identical to an unpadded forward, so results do not depend on batch-mates."""
    width = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attn[i, :n] = 1
        mask[i, len(p):n] = True
    return SeqBatch(ids, attn, mask)


def reduce_logps(sums: torch.Tensor, counts: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return sums
    if reduction == "mean":
        return sums / counts.clamp(min=1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                   reduction: str = "sum") -> torch.Tensor:
    """Per-sequence log-prob of the masked tokens from full logits [n, L, V]."""
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    sums = (logp * mask).sum(-1)
    return reduce_logps(sums, mask.sum(-1), reduction)


class _LinearLogProb(torch.autograd.Function):
    """log softmax(h @ W^T)[target] for selected rows, in chunks, recomputing logits in backward.

    Saves only h, W, targets and the log-sum-exp per row, so memory is O(rows x hidden), not O(rows x vocab).
    Matmuls run in `compute_dtype` (bf16 under autocast: AMX / tensor cores); softmax math is fp32.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int, compute_dtype: torch.dtype):
        w = weight.to(compute_dtype)
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        lse = torch.empty_like(out)
        for s in range(0, h.shape[0], chunk):
            logits = (h[s:s + chunk].to(compute_dtype) @ w.T).float()
            lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
            out[s:s + chunk] = logits.gather(-1, targets[s:s + chunk, None]).squeeze(-1) - lse[s:s + chunk]
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, targets, lse = ctx.saved_tensors
        cd, chunk = ctx.compute_dtype, ctx.chunk
        w = weight.to(cd)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for s in range(0, h.shape[0], chunk):
            hc = h[s:s + chunk].to(cd)
            g = grad_out[s:s + chunk].float()
            # d/dlogits of (logit[t] - lse) is onehot(t) - softmax; scaled by the incoming gradient.
            d = torch.exp((hc @ w.T).float() - lse[s:s + chunk, None]).mul_(-g[:, None])
            d.scatter_add_(-1, targets[s:s + chunk, None], g[:, None])
            d = d.to(cd)
            if grad_h is not None:
                grad_h[s:s + chunk] = (d @ w).to(h.dtype)
            if grad_w is not None:
                grad_w += (d.T @ hc).float()
        return grad_h, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None, None


def _autocast_dtype(device_type: str, fallback: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return fallback


def _unwrap(model: nn.Module) -> nn.Module:
    """The HF causal LM under DDP / peft wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


# Config fields through which a causal LM's forward changes its logits after `lm_head` (or its input before it),
# with the value that means "no change". Granite/GraniteMoE divide by logits_scaling, MiniCPM3 divides the hidden
# state by it, Cohere multiplies by logit_scale, Gemma 2/3 soft-cap, Falcon-H1 multiplies by lm_head_multiplier.
_LOGIT_TRANSFORMS = {"logits_scaling": 1.0, "logit_scale": 1.0, "final_logit_softcapping": None,
                     "lm_head_multiplier": 1.0, "logits_mup_width_multiplier": 1.0, "mup_enabled": False,
                     "output_multiplier_scale": 1.0}


def logit_transforms(config) -> dict:
    """The logit transforms a model config carries (field -> value), including a nested text_config."""
    found = {}
    for c in (config, getattr(config, "text_config", None)):
        for name, identity in _LOGIT_TRANSFORMS.items():
            value = getattr(c, name, identity) if c is not None else identity
            if value not in (identity, None, 0, 0.0, False) or (identity is None and value):
                found[name] = value
    return found


def supports_lean_head(model: nn.Module) -> bool:
    """The lean path assumes logits = hidden @ W^T with no bias, scaling or soft-capping."""
    lm = _unwrap(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    return (head is not None and isinstance(head, nn.Linear) and head.bias is None
            and hasattr(lm, "get_decoder") and not logit_transforms(getattr(lm, "config", None)))


class ResponseLogProbs(nn.Module):
    """Wraps a causal LM so that forward(batch) returns (sum of response-token log-probs [n], token counts [n]).

    Being an nn.Module, it can be handed to accelerate.prepare (DDP/FSDP hooks then see the forward).
    """

    def __init__(self, model: nn.Module, *, lean: bool = True, chunk: int = 1024, check: bool = True):
        super().__init__()
        self.model = model
        self.lean = lean and supports_lean_head(model)
        self.chunk = chunk
        self.checked = not check

    def forward(self, input_ids=None, attention_mask=None, loss_mask=None, packed=None):
        if packed is not None:  # a packing.PackedBatch (padding-free / shared prompt): slots in the padded order
            return self._packed(packed), packed.counts()
        mask = loss_mask[:, 1:]
        counts = mask.sum(-1)
        if self.lean and not self.checked:
            self._check_lean(input_ids[:1], attention_mask[:1], loss_mask[:1])
        if not self.lean:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            return sequence_logps(logits, input_ids, loss_mask, "sum"), counts
        return self._lean(input_ids, attention_mask, mask), counts

    # accelerate's FSDP2 prepare moves the module it is handed to the meta device (cpu_ram_efficient_loading),
    # which unties shared weights, and re-ties them by calling that module's `tie_weights`; it also groups the
    # (tied) embedding and LM head by asking for them. Without these three, a tied LM head (SmolLM2, the tiny test
    # Llama) silently became two parameters under FSDP, each with part of the gradient, each stepped on its own.
    def tie_weights(self, *args, **kwargs):
        lm = _unwrap(self.model)
        return lm.tie_weights(*args, **kwargs) if hasattr(lm, "tie_weights") else None

    def get_input_embeddings(self):
        lm = _unwrap(self.model)
        return lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None

    def get_output_embeddings(self):
        lm = _unwrap(self.model)
        return lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None

    @torch.no_grad()
    def _check_lean(self, input_ids, attention_mask, loss_mask) -> None:
        """Once, on one row: the lean head must agree with the model's own logits. A logit transform that no
        config field names (a new architecture) then falls back to the full path instead of training wrong."""
        self.checked = True
        n = int(loss_mask[:, 1:].sum())
        if n == 0:
            self.checked = False
            return
        # without autocast: bf16 logits round by ~0.05 nats, more than a small transform; fp32 paths agree to 1e-6.
        # Eager even where the layers are compiled: a one-off fp32 no-grad graph would cost a compilation of its own
        with torch.autocast(input_ids.device.type, enabled=False), torch.compiler.set_stance("force_eager"):
            lean = self._lean(input_ids, attention_mask, loss_mask[:, 1:]).float()
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            full = sequence_logps(logits, input_ids, loss_mask, "sum").float()
        fp32 = _unwrap(self.model).get_output_embeddings().weight.dtype == torch.float32
        if not torch.allclose(lean / n, full / n, atol=1e-3 if fp32 else 0.05, rtol=0.0):
            import warnings

            warnings.warn(f"lean LM head disagrees with {type(_unwrap(self.model)).__name__}'s logits "
                          f"({float(lean):.3f} vs {float(full):.3f}); using full logits", stacklevel=3)
            self.lean = False

    def _packed(self, batch):
        from deltalearn import packing

        if not self.checked:
            self._check_packed(batch)
        lm = _unwrap(self.model)
        if self.lean:
            with packing.attending(lm, batch) as kw:
                hidden = lm.get_decoder()(**kw, use_cache=False)[0]
            h = hidden[batch.pred_rows, batch.pred_cols]
            token_lp = _LinearLogProb.apply(h, lm.get_output_embeddings().weight, batch.targets, self.chunk,
                                            _autocast_dtype(h.device.type, h.dtype))
        else:
            with packing.attending(lm, batch) as kw:
                logits = self.model(**kw, use_cache=False).logits[batch.pred_rows, batch.pred_cols]
            token_lp = torch.log_softmax(logits.float(), -1).gather(-1, batch.targets[:, None]).squeeze(-1)
        sums = torch.zeros(batch.n_slots, dtype=torch.float32, device=h.device if self.lean else logits.device)
        return sums.index_add(0, batch.slots, token_lp.float())

    @torch.no_grad()
    def _check_packed(self, batch) -> None:
        """Once: the first two units packed must score what they score padded. A model whose attention layers do
        not go through transformers' attention functions would let packed sequences see each other: refuse it."""
        from deltalearn import packing

        units = packing.renumbered(list(batch.units[:2]))
        device = batch.input_ids.device
        padded = collate(packing.sequences(units), 0).to(device)
        if self.lean:
            self._check_lean(padded.input_ids[:1], padded.attention_mask[:1], padded.loss_mask[:1])
            if not self.checked:
                return  # no response token to check on yet: try again on the next batch
        self.checked = True
        small = packing.pack(units, pad_id=0, one_row=batch.one_row).to(device)
        with torch.autocast(device.type, enabled=False), torch.compiler.set_stance("force_eager"):
            want, n = self.forward(**padded.as_kwargs())
            got = self._packed(small)
        fp32 = _unwrap(self.model).get_output_embeddings().weight.dtype == torch.float32
        per_token = (got.float() - want.float()).abs() / n.clamp(min=1)
        if bool((per_token > (1e-3 if fp32 else 0.05)).any()):
            raise RuntimeError(f"padding-free / shared-prompt packing changes {type(_unwrap(self.model)).__name__}'s "
                               f"log-probs ({got.tolist()} packed vs {want.tolist()} padded): its attention does not "
                               "follow the packed layout; set train.padding_free and train.share_prompt to false")

    def _lean(self, input_ids, attention_mask, mask):
        lm = _unwrap(self.model)
        hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
        rows, cols = mask.nonzero(as_tuple=True)  # hidden position j predicts token j+1
        h = hidden[rows, cols]
        targets = input_ids[rows, cols + 1]
        weight = lm.get_output_embeddings().weight
        token_lp = _LinearLogProb.apply(h, weight, targets, self.chunk,
                                        _autocast_dtype(input_ids.device.type, h.dtype))
        sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
        return sums.index_add(0, rows, token_lp)


@torch.no_grad()
def batched_logps(model: nn.Module, seqs: list[tuple[list[int], list[int]]], *, pad_id: int, batch_size: int = 8,
                  precision: str = "auto", lean: bool = True, progress: bool = False, desc: str = "log-probs",
                  groups: list[list[int]] | None = None):
    """(sums [N], counts [N]) for many sequences, no grad: in length-sorted batches of `batch_size` (little
    padding), or, with `groups`, exactly in those batches (lists of indices into `seqs`, each one padded batch, in
    that order), because under bf16 a sequence's value depends on its batch-mates (the reference pass must batch
    as the training loop does). Sequences in no group stay -inf."""
    from deltalearn.precision import autocast_context

    device = next(model.parameters()).device
    scorer = ResponseLogProbs(model, lean=lean)
    sums = torch.full((len(seqs),), float("-inf"))
    counts = torch.zeros(len(seqs), dtype=torch.long)
    if groups is None:
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
        batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    else:
        batches = [list(g) for g in groups]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, unit="batch")
    was_training = model.training
    model.eval()
    try:
        for idx in batches:
            b = collate([seqs[i] for i in idx], pad_id).to(device)
            with autocast_context(precision, device):
                s, c = scorer(b.input_ids, b.attention_mask, b.loss_mask)
            sums[idx] = s.float().cpu()
            counts[idx] = c.cpu()
    finally:
        model.train(was_training)
    return sums, counts


def pair_logps(model, tokenizer, rows: list[dict], *, max_len: int = 1024, reduction: str = "mean",
               batch_size: int = 8, precision: str = "auto", system_prompt: str | None = None,
               source: str | None = None):
    """Log-probs of the chosen and rejected responses of each row (no grad): tensors [N], NaN where the prompt
    alone exceeds max_len (the row cannot be scored)."""
    from deltalearn.tokenize import encode_pairs

    encoded, kept, _ = encode_pairs(tokenizer, rows, max_len=max_len, system_prompt=system_prompt, source=source)
    seqs = [(e.prompt, e.chosen) for e in encoded] + [(e.prompt, e.rejected) for e in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums, counts = batched_logps(model, seqs, pad_id=pad, batch_size=batch_size, precision=precision)
    vals = reduce_logps(sums, counts, reduction)
    chosen = torch.full((len(rows),), float("nan"))
    rejected = torch.full((len(rows),), float("nan"))
    k = torch.tensor(kept, dtype=torch.long)
    chosen[k] = vals[: len(encoded)]
    rejected[k] = vals[len(encoded):]
    return chosen, rejected


def full_logits_reference(model: nn.Module, batch: SeqBatch, reduction: str = "sum") -> torch.Tensor:
    """The plain path (model forward -> full logits -> log_softmax -> gather), kept for tests and as a fallback."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return sequence_logps(logits, batch.input_ids, batch.loss_mask, reduction)




# Micro-batches of the training loop and of the reference pass (padded, or packed: deltalearn.packing)


def micro_batch(encoded, idx: list[int], *, pad_id: int, with_rejected: bool = True, padding_free: bool = False,
                share_prompt: bool = False):
    """The forward batch of pairs `idx` (encoded: tokenize.EncodedPair): chosen sides in slots 0..k-1, rejected
    sides in k..2k-1. Both switches off: the right-padded SeqBatch; else a packing.PackedBatch."""
    from deltalearn import packing

    if not (padding_free or share_prompt):
        seqs = [(encoded[i].prompt, encoded[i].chosen) for i in idx]
        if with_rejected:
            seqs += [(encoded[i].prompt, encoded[i].rejected) for i in idx]
        return collate(seqs, pad_id)
    return packing.pack_pairs([(encoded[i].prompt, encoded[i].chosen, encoded[i].rejected) for i in idx], pad_id=pad_id,
                      padding_free=padding_free, share_prompt=share_prompt, with_rejected=with_rejected)


@torch.no_grad()
def score_pair_groups(model, encoded, groups: list[list[int]], *, pad_id: int, padding_free: bool,
                      share_prompt: bool, precision: str = "fp32", progress: bool = False,
                      desc: str = "log-probs") -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """No-grad log-prob sums and counts of pairs, one forward per group laid out as `micro_batch` lays it out:
    [(group, sums [2k], counts [2k])] (chosen sides first), on the CPU. The reference pass of a packed run."""
    from deltalearn.precision import autocast_context

    device = next(model.parameters()).device
    scorer = ResponseLogProbs(model)
    it = groups
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(groups, desc=desc, unit="batch")
    was_training = model.training
    model.eval()
    out = []
    try:
        for g in it:
            b = micro_batch(encoded, g, pad_id=pad_id, padding_free=padding_free, share_prompt=share_prompt)
            with autocast_context(precision, device):
                s, c = scorer(**b.to(device).as_kwargs())
            out.append((list(g), s.float().cpu(), c.cpu()))
    finally:
        model.train(was_training)
    return out


__all__ = ["SeqBatch", "collate", "sequence_logps", "reduce_logps", "ResponseLogProbs", "batched_logps",
           "pair_logps", "supports_lean_head", "logit_transforms", "full_logits_reference", "micro_batch",
           "score_pair_groups"]
