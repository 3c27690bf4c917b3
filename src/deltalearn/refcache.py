"""The reference-model log-prob cache: computed once in a no-grad pass, kept on disk, reused across runs.

The key is a hash of exactly what determines the numbers: the reference model's identity, the precision of the
pass, and the *token ids* of every prompt/chosen/rejected sequence (which already encode the data, tokenizer,
chat template and max_len truncation). The cache stores sums *and* token counts per sequence, so one cache serves
both reductions (dpo's sum and dpo_norm's mean) and the loss can never read the wrong one.

File: `<cache_dir>/<key>.safetensors` with tensors chosen_sum, chosen_n, rejected_sum, rejected_n, written
atomically (temp file + rename). Rows are filled with -inf first; any -inf left after the pass is an error, never
a silent zero. In multi-process runs each rank scores a strided shard, shards are merged with a MAX all-reduce
(not SUM, which double-counts padded duplicates), and only the main process writes; the main process alone decides
hit or miss and broadcasts it (ranks may have their own cache folders). Under an engine that computes in bf16 weights
(FSDP/DeepSpeed bf16) train.py scores a miss through the prepared module (`compute_prepared`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from deltalearn.io import DataError, as_oserror, ordinary_permissions, write_failed
from deltalearn.locks import artifact_lock
from deltalearn.models import cache_home
from deltalearn.tokenize import EncodedPair

CACHE_VERSION = 2  # 2: files carry a content hash (metadata content_sha256), checked on load


def default_cache_dir() -> Path:
    return cache_home() / "ref_logps"


def cache_key(encoded: list[EncodedPair], *, model_fingerprint: str, precision: str, layout=None,
              packing: dict | None = None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "model": model_fingerprint, "precision": precision}).encode())
    if packing is not None:  # packed / shared-prompt forwards round differently (bf16: by far more than fp32)
        h.update(json.dumps(packing, sort_keys=True).encode())
    if layout is not None:  # bf16 values depend on the batch-mates each pair was scored with
        h.update(json.dumps(layout).encode())
    for e in encoded:
        for part in (e.prompt, e.chosen, e.rejected):
            h.update(np.asarray(part, dtype=np.int64).tobytes())
            h.update(b"|")
    return h.hexdigest()[:32]


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (stored in the file's metadata, checked on load)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load(path: Path, n: int) -> dict[str, torch.Tensor] | None:
    from safetensors import safe_open

    if not path.exists():
        return None
    fix = "; delete it to recompute"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a torn/garbled file
        raise DataError(path, f"reference cache is unreadable (truncated or corrupt: {e}){fix}") from None
    if any(k not in t for k in ("chosen_sum", "chosen_n", "rejected_sum", "rejected_n")):
        raise DataError(path, f"reference cache is missing tensors{fix}")
    want = meta.get("content_sha256")
    if want is None:
        raise DataError(path, f"reference cache has no content hash (written by an older version){fix}")
    got = content_hash(t)
    if got != want:
        raise DataError(path, f"reference cache content hash mismatch (file says {want[:12]}..., content is "
                        f"{got[:12]}...): the file was altered or damaged{fix}")
    if t["chosen_sum"].shape[0] != n:
        raise DataError(path, f"reference cache has {t['chosen_sum'].shape[0]} rows, the data has {n}")
    missing = torch.isinf(t["chosen_sum"]) | torch.isinf(t["rejected_sum"])
    if missing.any():
        raise DataError(path, f"reference cache has {int(missing.sum())} rows without values "
                        f"(first: {int(missing.nonzero()[0])}){fix}")
    return t


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    try:
        save_file(tensors, tmp, metadata={**{k: str(v) for k, v in meta.items()},
                                          "content_sha256": content_hash(tensors)})
        ordinary_permissions(tmp)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - safetensors wraps I/O errors in its own type
        if as_oserror(e) is None:
            raise
        raise write_failed(path, as_oserror(e)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _score_packed(model, encoded: list[EncodedPair], groups, out: dict, *, pad_id: int, precision: str,
                  progress: bool, packing: dict) -> None:
    """Score pairs in `groups` [(micro-batch, pairs to keep)] packed as the training packs them (packing.py)."""
    from deltalearn.logps import score_pair_groups

    scored = score_pair_groups(model, encoded, [mb for mb, _ in groups], pad_id=pad_id, precision=precision,
                               progress=progress, desc="reference log-probs", **packing)
    for (mb, keep), (_, sums, counts) in zip(groups, scored):
        k, wanted = len(mb), set(keep)
        for j, i in enumerate(mb):
            if i in wanted:
                out["chosen_sum"][i], out["chosen_n"][i] = sums[j], counts[j].float()
                out["rejected_sum"][i], out["rejected_n"][i] = sums[k + j], counts[k + j].float()


def _score_layout(model, encoded: list[EncodedPair], layout, out: dict, *, pad_id: int, precision: str,
                  progress: bool) -> None:
    """Score pairs in given micro-batches, exactly as the training loop batches them: the chosen sides of the
    micro-batch, then its rejected sides, in one padded batch. Only the `keep` pairs of each are written (a
    micro-batch is scored whole, but its pairs met in an earlier one keep that batch's values)."""
    from deltalearn.logps import batched_logps

    seqs, groups, keep_at = [], [], []  # keep_at: (pair, position of its chosen side, of its rejected side)
    for mb, keep in layout:
        start, wanted = len(seqs), set(keep)
        seqs += [(encoded[i].prompt, encoded[i].chosen) for i in mb]
        seqs += [(encoded[i].prompt, encoded[i].rejected) for i in mb]
        groups.append(list(range(start, len(seqs))))
        keep_at += [(i, start + j, start + len(mb) + j) for j, i in enumerate(mb) if i in wanted]
    sums, counts = batched_logps(model, seqs, pad_id=pad_id, precision=precision, groups=groups, progress=progress,
                                 desc="reference log-probs")
    for i, c, r in keep_at:
        out["chosen_sum"][i], out["chosen_n"][i] = sums[c], counts[c].float()
        out["rejected_sum"][i], out["rejected_n"][i] = sums[r], counts[r].float()


def compute(model, encoded: list[EncodedPair], *, pad_id: int, precision: str, batch_size: int,
            accelerator=None, progress: bool = True, layout=None, packing: dict | None = None
            ) -> dict[str, torch.Tensor]:
    """Score every pair's chosen and rejected response under `model` (no grad): in length-sorted batches, or, with
    `layout` (this rank's [(micro-batch, pairs to keep)], see train.reference_layout), in the training's batches."""
    from deltalearn.logps import batched_logps

    n = len(encoded)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    out = {k: torch.full((n,), float("-inf")) for k in ("chosen_sum", "chosen_n", "rejected_sum", "rejected_n")}
    if packing is not None:  # in the training's micro-batches, or length-sorted groups of batch_size sequences
        mine = sorted(range(rank, n, world), key=lambda i: len(encoded[i].chosen) + len(encoded[i].rejected))
        per = max(1, batch_size // 2)
        groups = layout if layout is not None else [(mine[s:s + per],) * 2 for s in range(0, len(mine), per)]
        _score_packed(model, encoded, groups, out, pad_id=pad_id, precision=precision,
                      progress=progress and rank == 0, packing=packing)
    elif layout is not None:
        _score_layout(model, encoded, layout, out, pad_id=pad_id, precision=precision, progress=progress and rank == 0)
    else:
        mine = list(range(rank, n, world))
        seqs = [(encoded[i].prompt, encoded[i].chosen) for i in mine] + [(encoded[i].prompt, encoded[i].rejected)
                                                                         for i in mine]
        sums, counts = batched_logps(model, seqs, pad_id=pad_id, batch_size=batch_size, precision=precision,
                                     progress=progress and rank == 0, desc="reference log-probs")
        idx = torch.tensor(mine, dtype=torch.long)
        k = len(mine)
        out["chosen_sum"][idx], out["rejected_sum"][idx] = sums[:k], sums[k:]
        out["chosen_n"][idx], out["rejected_n"][idx] = counts[:k].float(), counts[k:].float()
    return _merge_ranks(out, accelerator if world > 1 else None)


def compute_prepared(score_batch, encoded: list[EncodedPair], layout, *, pad_id: int, device,
                     accelerator=None, packing: dict | None = None) -> dict[str, torch.Tensor]:
    """Score every pair through the *prepared* training module (`score_batch(SeqBatch) -> (sums, counts)`, no grad):
    the weights, dtype and sharding the policy trains with (FSDP's bf16 MixedPrecisionPolicy, DeepSpeed's bf16
    engine), in the training's micro-batches (`layout`: every rank's). Each forward of a sharded module is a
    collective, so every rank runs as many as the rank with the most (the extra ones repeat a batch, unkept)."""
    from deltalearn.logps import micro_batch

    switches = packing or {}
    n = len(encoded)
    rank = accelerator.process_index if accelerator is not None else 0
    mine = layout[rank]
    rounds = max(len(per_rank) for per_rank in layout)
    out = {k: torch.full((n,), float("-inf")) for k in ("chosen_sum", "chosen_n", "rejected_sum", "rejected_n")}
    for j in range(rounds):
        if j < len(mine):
            mb, keep = mine[j]
        else:  # this rank is done: a forward the other ranks' collectives need, its values not kept
            mb, keep = (mine[-1] if mine else layout[0][0])[0], []
        batch = micro_batch(encoded, mb, pad_id=pad_id,
                            padding_free=bool(switches.get("padding_free")),
                            share_prompt=bool(switches.get("share_prompt")))
        with torch.no_grad():
            sums, counts = score_batch(batch.to(device))
        sums, counts, k, wanted = sums.float().cpu(), counts.float().cpu(), len(mb), set(keep)
        for pos, i in enumerate(mb):
            if i in wanted:
                out["chosen_sum"][i], out["chosen_n"][i] = sums[pos], counts[pos]
                out["rejected_sum"][i], out["rejected_n"][i] = sums[k + pos], counts[k + pos]
    return _merge_ranks(out, accelerator)


def _merge_ranks(out: dict[str, torch.Tensor], accelerator) -> dict[str, torch.Tensor]:
    if accelerator is not None and accelerator.num_processes > 1:
        for key in out:
            t = out[key].to(accelerator.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            out[key] = t.cpu()
    missing = torch.isinf(out["chosen_sum"]) | torch.isinf(out["rejected_sum"])
    if missing.any():
        raise RuntimeError(f"reference pass left {int(missing.sum())} rows unscored")
    return out


def reference_logps(model_loader, encoded: list[EncodedPair], *, model_fingerprint: str, precision: str,
                    pad_id: int, batch_size: int = 16, cache_dir: str | Path | None = None, accelerator=None,
                    progress: bool = True, layout=None, packing: dict | None = None,
                    score_prepared=None) -> tuple[dict[str, torch.Tensor], Path, bool]:
    """Cached reference log-probs. `model_loader()` is called only on a cache miss, and the model it returns is
    dropped before this returns; or, with `score_prepared` (see compute_prepared), the miss is scored through the
    prepared training module. `layout`: every rank's micro-batches (train.reference_layout; bf16), or None.
    `packing`: the training's packing switches (packing.mode), scored the same way. Returns (tensors, cache path,
    hit). With several processes the main process decides hit or miss for all (each rank may have its own cache
    folder: a rank that hit would skip the collectives the others fill with)."""
    from deltalearn import distributed

    key = cache_key(encoded, model_fingerprint=model_fingerprint, precision=precision, layout=layout,
                    packing=packing)
    path = Path(cache_dir or default_cache_dir()) / f"{key}.safetensors"
    hit = distributed.on_main(accelerator, lambda: load(path, len(encoded)))
    if hit is not None:
        return hit, path, True
    def fill():
        if score_prepared is not None:
            tensors = compute_prepared(score_prepared, encoded, layout, pad_id=pad_id,
                                       device=accelerator.device if accelerator is not None else "cpu",
                                       accelerator=accelerator, packing=packing)
        else:
            model = model_loader()
            rank = accelerator.process_index if accelerator is not None else 0
            tensors = compute(model, encoded, pad_id=pad_id, precision=precision, batch_size=batch_size,
                              accelerator=accelerator, progress=progress, layout=layout[rank] if layout else None,
                              packing=packing)
            del model
        if accelerator is None or accelerator.is_main_process:
            save(path, tensors, {"model": model_fingerprint, "precision": precision, "rows": len(encoded),
                                 "version": CACHE_VERSION})
        if accelerator is not None:
            accelerator.wait_for_everyone()
        return tensors, path, False

    if accelerator is not None and accelerator.num_processes > 1:
        return fill()  # every rank scores its shard (collectives): no lock, only the main process writes
    # One process fills a cache entry; another that needs the same entry waits for it instead of redoing it.
    with artifact_lock(path, what="reference cache", wait=True):
        hit = load(path, len(encoded))
        if hit is not None:
            return hit, path, True
        return fill()
