"""Padding-free packing and the shared-prompt forward: fewer FLOPs per pair, the same log-probs.

Two levers, one layout (`pack`):
- `padding_free`: the sequences of a micro-batch are concatenated into one row, positions restarting at 0 for each
  sequence, attention confined to each sequence. No pad token is ever computed.
- `share_prompt`: a pair runs as prompt + chosen + rejected in one sequence. The rejected tokens attend to the prompt
  and to themselves, never to chosen, and their positions continue from the prompt (as chosen's do), so each side
  sees exactly what it sees in its own sequence: the prompt is computed once instead of twice.

A micro-batch becomes `Unit`s (one prompt and one or two responses) laid out in rows (all in one row when
padding-free, else one unit per right-padded row). Attention is described by `Block`s that tile each row: a block's
queries attend causally to themselves and, fully, to an earlier stretch of the same row (its prompt). The first
block of a unit is prompt + first response (plain causal); a shared prompt's second response is a block whose
prefix is the prompt. `dense_mask` turns the blocks into the [rows, 1, L, L] boolean mask (tests, and the rule
written out); `block_attention` computes attention block by block, so no token pays for another sequence's keys
(a dense mask over one packed row would cost (sum of lengths)^2 instead of the sum of squares).

Which kernel runs (`attention_plan`): with flash-attention 2/3 installed and no shared prompt, transformers' own
varlen path (cu_seqlens from the restarting positions); otherwise `block_attention` through a registered
transformers attention function (SDPA per block: flash / memory-efficient kernels on GPUs, the CPU flash kernel
here). Scoring: each response token is predicted by the hidden state of the token before it *in its own sequence*
(the first rejected token by the last prompt token, not by the last chosen token), so `PackedBatch` carries the
predicting positions explicitly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

ATTENTION_NAME = "deltalearn_blocks"
FLASH_VARLEN = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


@dataclass(frozen=True)
class Unit:
    """One prompt followed by its responses; response j's log-prob goes to output slot `slots[j]`."""

    prompt: tuple[int, ...]
    responses: tuple[tuple[int, ...], ...]
    slots: tuple[int, ...]


@dataclass(frozen=True)
class Block:
    """Queries at columns [start, start + length) of `row` attend causally among themselves and to every column of
    [prefix_start, prefix_start + prefix_len) (their prompt; empty for a plain causal block)."""

    row: int
    start: int
    length: int
    prefix_start: int = 0
    prefix_len: int = 0


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [rows, L] long
    position_ids: torch.Tensor  # [rows, L] long: restart at 0 per unit; a shared prompt's responses both follow it
    blocks: tuple[Block, ...]
    pred_rows: torch.Tensor  # [n] long: the row and column of the hidden state that predicts each scored token
    pred_cols: torch.Tensor
    targets: torch.Tensor  # [n] long: the scored token ids
    slots: torch.Tensor  # [n] long: the output slot (sequence) each scored token adds to
    n_slots: int
    n_tokens: int  # real tokens counted as a padded batch would (prompt once per sequence), for tokens/s
    units: tuple[Unit, ...]  # what was packed, and how (for the one-off check against a padded forward)
    one_row: bool

    def to(self, device) -> "PackedBatch":
        t = {k: getattr(self, k).to(device) for k in ("input_ids", "position_ids", "pred_rows", "pred_cols",
                                                      "targets", "slots")}
        return PackedBatch(**t, blocks=self.blocks, n_slots=self.n_slots, n_tokens=self.n_tokens, units=self.units,
                           one_row=self.one_row)

    def as_kwargs(self) -> dict:
        return {"packed": self}

    def counts(self) -> torch.Tensor:
        """Scored tokens per slot (what a padded batch's loss mask counts)."""
        return torch.zeros(self.n_slots, dtype=torch.long, device=self.slots.device).index_add_(
            0, self.slots, torch.ones_like(self.slots))


def units_for_pairs(pairs: list[tuple[list[int], list[int], list[int]]], *, share_prompt: bool,
                    with_rejected: bool = True) -> list[Unit]:
    """(prompt, chosen, rejected) of k pairs -> units whose slots follow the padded layout: chosen sides 0..k-1,
    rejected sides k..2k-1 (only chosen, slots 0..k-1, without rejected)."""
    k = len(pairs)
    if share_prompt and with_rejected:
        return [Unit(tuple(p), (tuple(c), tuple(r)), (i, k + i)) for i, (p, c, r) in enumerate(pairs)]
    units = [Unit(tuple(p), (tuple(c),), (i,)) for i, (p, c, _) in enumerate(pairs)]
    if with_rejected:
        units += [Unit(tuple(p), (tuple(r),), (k + i,)) for i, (p, _, r) in enumerate(pairs)]
    return units


def pack(units: list[Unit], *, pad_id: int, one_row: bool) -> PackedBatch:
    """Lay units out in one row (padding-free) or one right-padded row each; see the module docstring."""
    rows: list[list[Unit]] = [units] if one_row else [[u] for u in units]
    width = max(sum(len(u.prompt) + sum(map(len, u.responses)) for u in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    blocks: list[Block] = []
    pr, pc, tg, sl = [], [], [], []
    n_tokens = 0
    for r, row in enumerate(rows):
        col = 0
        for u in row:
            p = len(u.prompt)
            s = col
            ids[r, s:s + p] = torch.tensor(u.prompt, dtype=torch.long)
            pos[r, s:s + p] = torch.arange(p)
            col += p
            for j, (resp, slot) in enumerate(zip(u.responses, u.slots)):
                n = len(resp)
                ids[r, col:col + n] = torch.tensor(resp, dtype=torch.long)
                pos[r, col:col + n] = torch.arange(p, p + n)
                if j == 0 and p + n:
                    blocks.append(Block(r, s, p + n))
                elif j and n:
                    blocks.append(Block(r, col, n, s, p))
                # token i of the response is predicted by the token before it in its own sequence: the previous
                # response token, or for the first one the prompt's last (none when the prompt is empty)
                before = [col + i - 1 for i in range(1, n)]
                first = [s + p - 1] if p > 0 and n > 0 else []
                cols = first + before
                pr += [r] * len(cols)
                pc += cols
                tg += list(resp[-len(cols):]) if cols else []
                sl += [slot] * len(cols)
                n_tokens += p + n
                col += n
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    n_slots = 1 + max(s for u in units for s in u.slots)
    return PackedBatch(ids, pos, tuple(blocks), t(pr), t(pc), t(tg), t(sl), n_slots, n_tokens, tuple(units), one_row)


def pack_pairs(pairs, *, pad_id: int, padding_free: bool, share_prompt: bool, with_rejected: bool = True
               ) -> PackedBatch:
    """A training micro-batch: (prompt, chosen, rejected) triples -> the packed layout the two switches ask for."""
    return pack(units_for_pairs(pairs, share_prompt=share_prompt, with_rejected=with_rejected), pad_id=pad_id,
                one_row=padding_free)


def sequences(units: list[Unit]) -> list[tuple[list[int], list[int]]]:
    """The (prompt, response) sequences of units in slot order: the padded batch that scores the same thing."""
    by_slot = {s: (list(u.prompt), list(r)) for u in units for r, s in zip(u.responses, u.slots)}
    return [by_slot[s] for s in sorted(by_slot)]


def renumbered(units: list[Unit]) -> list[Unit]:
    """The same units with slots 0, 1, 2, ... in order (a sub-batch that stands on its own)."""
    out, k = [], 0
    for u in units:
        out.append(Unit(u.prompt, u.responses, tuple(range(k, k + len(u.responses)))))
        k += len(u.responses)
    return out


def dense_mask(batch: PackedBatch) -> torch.Tensor:
    """The [rows, 1, L, L] boolean mask (True: may attend) that the blocks describe. Padding columns attend only to
    themselves (a row of the softmax may not be empty), and nothing attends to them."""
    rows, width = batch.input_ids.shape
    m = torch.zeros(rows, width, width, dtype=torch.bool)
    for b in batch.blocks:
        q = slice(b.start, b.start + b.length)
        m[b.row, q, q] = torch.ones(b.length, b.length, dtype=torch.bool).tril()
        if b.prefix_len:
            m[b.row, q, b.prefix_start:b.prefix_start + b.prefix_len] = True
    covered = torch.zeros(rows, width, dtype=torch.bool)
    for b in batch.blocks:
        covered[b.row, b.start:b.start + b.length] = True
    idx = torch.arange(width)
    m[:, idx, idx] |= ~covered
    return m[:, None].to(batch.input_ids.device)


# ---------------------------------------------------------------------------------------------------------
# Attention by blocks, registered with transformers
# ---------------------------------------------------------------------------------------------------------

_CURRENT: list[tuple[Block, ...]] = []  # the blocks of the forward in progress (set by `attending`)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


@torch.compiler.disable  # a Python loop over blocks: compiled layers call it between their own graphs
def block_attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """transformers attention function: SDPA per block of the current `PackedBatch` (see `attending`).
    query [rows, H, L, D], key/value [rows, H_kv, L, D] -> ([rows, L, H, D], None)."""
    if not _CURRENT:
        raise RuntimeError(f"the {ATTENTION_NAME} attention runs only inside packing.attending(...)")
    blocks = _CURRENT[-1]
    n_rep = query.shape[1] // key.shape[1]
    rows, width = query.shape[0], query.shape[2]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    per_row: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    used = [0] * rows
    for b in blocks:
        q = query[b.row:b.row + 1, :, b.start:b.start + b.length]
        k = key[b.row:b.row + 1, :, b.start:b.start + b.length]
        v = value[b.row:b.row + 1, :, b.start:b.start + b.length]
        if b.prefix_len:
            pre = slice(b.prefix_start, b.prefix_start + b.prefix_len)
            k = torch.cat([key[b.row:b.row + 1, :, pre], k], dim=2)
            v = torch.cat([value[b.row:b.row + 1, :, pre], v], dim=2)
            # query i sees the whole prefix and its own block up to i (causal, aligned bottom-right)
            mask = (torch.arange(b.prefix_len + b.length, device=q.device)[None, :]
                    <= torch.arange(b.length, device=q.device)[:, None] + b.prefix_len)
            out = sdpa(q, _repeat_kv(k, n_rep), _repeat_kv(v, n_rep), attn_mask=mask, dropout_p=dropout,
                       scale=scaling)
        else:
            out = sdpa(q, _repeat_kv(k, n_rep), _repeat_kv(v, n_rep), is_causal=True, dropout_p=dropout,
                       scale=scaling)
        if b.start != used[b.row]:
            raise RuntimeError("packing blocks must tile each row from its start, in order")
        per_row[b.row].append(out)
        used[b.row] = b.start + b.length
    outs = []
    for r in range(rows):
        if used[r] < width:  # right padding: its outputs are never read
            per_row[r].append(query.new_zeros(1, query.shape[1], width - used[r], value.shape[-1]))
        outs.append(torch.cat(per_row[r], dim=2))
    return torch.cat(outs, dim=0).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, block_attention)


def _configs(model) -> list:
    c = getattr(model, "config", None)
    return [x for x in (c, getattr(c, "text_config", None)) if x is not None]


def varlen_attention(device, precision: str, padding_free: bool, share_prompt: bool) -> str | None:
    """The flash-attention implementation a padding-free run switches its models to: on CUDA, under bf16 (flash
    kernels take no fp32), without a shared prompt (its second response attends to a prefix that is not contiguous
    with it, which varlen cannot express), when flash-attention 3 or 2 is installed; else None (block attention)."""
    import importlib.util

    if torch.device(device).type != "cuda" or precision != "bf16" or not padding_free or share_prompt:
        return None
    for module, name in (("flash_attn_interface", "flash_attention_3"), ("flash_attn", "flash_attention_2")):
        if importlib.util.find_spec(module) is not None:
            return name
    return None


def use_varlen_attention(model, device, precision: str, padding_free: bool, share_prompt: bool) -> str | None:
    """Switch `model` to `varlen_attention(...)` when there is one; returns its name."""
    name = varlen_attention(device, precision, padding_free, share_prompt)
    if name is not None:
        model.set_attn_implementation(name)
    return name


def attention_plan(model, batch: PackedBatch) -> str:
    """'varlen': transformers' flash-attention varlen path (flash-attention 2/3 in use, no shared prompt: every
    block is a plain causal one); 'blocks': `block_attention`."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl in FLASH_VARLEN and all(b.prefix_len == 0 for b in batch.blocks) and batch.input_ids.shape[0] == 1:
        return "varlen"
    return "blocks"


@contextlib.contextmanager
def attending(model, batch: PackedBatch):
    """Run `model` (the decoder) on `batch` inside this: yields the keyword arguments of the forward
    (input_ids, position_ids, and what the kernel needs)."""
    kwargs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "attention_mask": None}
    if attention_plan(model, batch) == "varlen":
        lengths = torch.tensor([b.length for b in batch.blocks], dtype=torch.int32, device=batch.input_ids.device)
        cu = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        longest = int(lengths.max())
        yield {**kwargs, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
        return
    _register()
    configs = _configs(model)
    saved = [c._attn_implementation for c in configs]
    for c in configs:
        c._attn_implementation = ATTENTION_NAME
    _CURRENT.append(batch.blocks)
    try:
        yield kwargs
    finally:
        _CURRENT.pop()
        for c, s in zip(configs, saved):
            c._attn_implementation = s



# ---------------------------------------------------------------------------------------------------------
# The packing switches as the reference cache records them
# ---------------------------------------------------------------------------------------------------------


def mode(padding_free: bool, share_prompt: bool) -> dict | None:
    """The packing switches as the reference cache records them; None when both are off (the padded layout)."""
    return {"padding_free": padding_free, "share_prompt": share_prompt} if padding_free or share_prompt else None


__all__ = ["Unit", "Block", "PackedBatch", "units_for_pairs", "pack", "pack_pairs",
           "sequences", "renumbered", "dense_mask", "block_attention", "attention_plan", "attending",
           "mode", "varlen_attention", "use_varlen_attention"]
