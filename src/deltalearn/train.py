"""The training loop: DPO / dpo_norm / IPO / SimPO, and SFT on the chosen side, in one readable loop.

Shape of a run (top to bottom in `train`):
1. tokenize every pair once (deltalearn.tokenize owns the prompt/response boundary);
2. reference log-probs from the on-disk cache, or one no-grad pass that fills it; the reference model is freed;
3. for each optimizer step: take the step's global batch of pairs (a fixed, seeded order, so a resumed run sees
   exactly the same data), give each process its strided share, sort that share by length into micro-batches
   (less padding), and accumulate gradients scaled by 1 / global batch: the result depends only on the global
   batch, not on how it is split into micro-batches or processes (tests check 1x4 == 4x1 and 2 processes == 1);
4. clip, AdamW step, cosine-with-warmup schedule, log one metrics row, checkpoint every `save_every` steps;
5. save the final model (safetensors + tokenizer) and a COMPLETED marker.

Checkpoints are safetensors (weights, optimizer moments, RNG) plus JSON: nothing is unpickled on resume. Under
DeepSpeed/FSDP the engine's own `save_state` files hold weights and optimizer (FSDP's are read back with
`torch.load(weights_only=True)`, which refuses code); step, LR schedule and RNG stay ours.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deltalearn import cards, distributed, interrupts, models, packing, refcache, speedups, trackers
from deltalearn.io import (DataError, JsonlAppender, as_oserror, ordinary_permissions, read_json, read_table,
                           write_failed, write_json_atomic)
from deltalearn.locks import artifact_lock
from deltalearn.logps import ResponseLogProbs, micro_batch, reduce_logps
from deltalearn.losses import LossType, preference_loss, sft_loss
from deltalearn.precision import autocast_context, use_bf16
from deltalearn.recipe import ConfigError, TrainConfig, hf_name_hint, resolve_train
from deltalearn.tokenize import encode_pairs

# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def load_pair_rows(pairs, loss: LossType, split: str = "train", *, chosen_key: str | None = None,
                   rejected_key: str | None = None) -> tuple[list[dict], str | None]:
    """Rows from a list, a file/folder or a Hub dataset id (its `split`); SFT needs only prompt + chosen. TRL's
    implicit-prompt rows (whole conversations in chosen/rejected) get their shared prompt split off. With
    `chosen_key` (and `rejected_key`), rows in the authors' released layout: one conversation column per model
    (deltalearn.conversations)."""
    from deltalearn import hub

    source = None
    if hub.is_hub_dataset_id(pairs):
        source = str(pairs)
        rows = hub.load_hub_pairs(source, split)
    elif isinstance(pairs, (str, os.PathLike)):
        source = str(pairs)
        rows = read_table(pairs)
    else:
        rows = list(pairs)
    rows = hub.split_implicit_prompt(rows, source)
    if not rows:
        raise DataError(source, "no pairs to train on")
    if chosen_key:
        from deltalearn.conversations import pairs_from_columns

        if loss.uses_rejected and not rejected_key:
            raise ConfigError(f"train.chosen_key is set; loss {loss.value} also needs train.rejected_key")
        rows = pairs_from_columns(rows, chosen_key, rejected_key if loss.uses_rejected else None, source)
    if not loss.uses_rejected:
        rows = [r if "rejected" in r else {**r, "rejected": r.get("chosen", "")} for r in rows]
    return rows, source


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def step_indices(n: int, batch_size: int, step: int, seed: int, shuffle: bool) -> list[int]:
    """The global batch of optimizer step `step`: epoch e uses a permutation seeded by (seed, e)."""
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    return _epoch_order(n, seed, epoch, shuffle)[pos * batch_size:(pos + 1) * batch_size].tolist()


def micro_batches(encoded, gidx: list[int], rank: int, world: int, micro_batch_size: int) -> list[list[int]]:
    """This rank's share of a global batch in micro-batches, longest pairs first (the loss is a sum over pairs, so
    the grouping does not change it; sorting keeps padding low)."""
    mine = sorted(gidx[rank::world], key=lambda i: -(len(encoded[i].chosen) + len(encoded[i].rejected)))
    return [mine[s:s + micro_batch_size] for s in range(0, len(mine), micro_batch_size)]


def reference_layout(encoded, cfg: TrainConfig, total_steps: int, world: int) -> list[list[tuple[list[int], list[int]]]]:
    """For each rank, the micro-batches of the reference pass: (pairs scored together, pairs whose values to keep).

    In bf16 a sequence's log-prob depends on what it is batched with (padding and batch shape change the kernels'
    rounding: ~0.5 nats on a 200-token response here), so a reference scored in other batches than the policy's makes
    the first DPO loss differ from ln 2 although policy == reference. So each pair is scored in the micro-batch
    where training first meets it, with the same batch-mates in the same order; pairs no step uses are scored in
    length-sorted groups at the end."""
    n, seen = len(encoded), set()
    layout: list[list[tuple[list[int], list[int]]]] = [[] for _ in range(world)]
    for step in range(total_steps):
        if len(seen) == n or step >= 2 * max(1, n // cfg.batch_size):  # two epochs meet every pair
            break
        gidx = step_indices(n, cfg.batch_size, step, cfg.seed, cfg.shuffle)
        for rank in range(world):
            for mb in micro_batches(encoded, gidx, rank, world, cfg.micro_batch_size):
                new = [i for i in mb if i not in seen]
                if new:
                    layout[rank].append((mb, new))
                    seen.update(new)
    rest = sorted((i for i in range(n) if i not in seen),
                  key=lambda i: -(len(encoded[i].chosen) + len(encoded[i].rejected)))
    for j, s in enumerate(range(0, len(rest), cfg.micro_batch_size)):
        group = rest[s:s + cfg.micro_batch_size]
        layout[j % world].append((group, group))
    return layout


def lr_lambda(total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    """Linear warmup, then cosine decay to min_lr_ratio x lr (the reference configs' schedule)."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


# ---------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors + JSON, no pickle
# ---------------------------------------------------------------------------------------------------------


def _uses_engine_state(accelerator) -> bool:
    """DeepSpeed and FSDP shard weights and optimizer states, so their own save/load_state owns that part."""
    return accelerator.distributed_type.value in ("DEEPSPEED", "FSDP")


def _save_checkpoint(path: Path, model, optimizer, scheduler, step: int, accelerator) -> None:
    """Write into `<path>.tmp`, hash every file (hashes.json), mark it COMPLETE, then rename: a killed or failed
    save (disk full) never looks like a checkpoint and leaves the earlier ones intact. Under DeepSpeed/FSDP the
    engine writes weights and optimizer; the step, schedule and RNG are ours in both."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        opt_json: dict = {}
        if _uses_engine_state(accelerator):
            accelerator.save_state(str(tmp))
            # accelerate pickles each rank's RNG; ours goes to safetensors below, so resume never unpickles it
            for f in tmp.glob(f"random_states_{accelerator.process_index}.pkl"):
                f.unlink()
            save_file(rng_tensors(accelerator.device), str(tmp / f"rng_{accelerator.process_index}.safetensors"))
        elif accelerator.is_main_process:
            opt_json = _write_weights_and_optimizer(tmp, model, optimizer, accelerator.device)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # the LR schedule is not an accelerate-prepared object, so save_state would not hold it: keep it here
            write_json_atomic(tmp / "state.json", {"step": step, "scheduler": scheduler.state_dict(),
                                                   "python_rng": random.getstate(), **opt_json})
            ordinary_permissions(tmp)
        write_hashes(tmp, accelerator)
        if accelerator.is_main_process:
            (tmp / "COMPLETE").write_text("ok\n")
    except Exception as e:  # e.g. disk full: the earlier checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        if as_oserror(e) is not None:
            raise write_failed(path, as_oserror(e), kept="the earlier checkpoints are intact") from None
        if isinstance(e, DataError):
            raise DataError(path, f"could not write the checkpoint ({e}); the earlier ones are intact") from None
        raise
    if accelerator.is_main_process:
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()


def rng_tensors(device) -> dict[str, torch.Tensor]:
    """This process's torch RNG states, for a checkpoint: the CPU generator, and the GPU's own when training on one
    (dropout kernels, e.g. LoRA's, draw from the device generator, which torch.get_rng_state does not cover)."""
    out = {"torch_rng": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        out["cuda_rng"] = torch.cuda.get_rng_state(device).cpu()
    return out


def restore_rng(tensors: dict[str, torch.Tensor], device) -> None:
    """Undo `rng_tensors`. A checkpoint from a CPU run resumed on a GPU restores the CPU generator only."""
    torch.set_rng_state(tensors["torch_rng"])
    if "cuda_rng" in tensors and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(tensors["cuda_rng"], device)


def _write_weights_and_optimizer(tmp: Path, model, optimizer, device) -> dict:
    """Our own checkpoint files (one process, no engine): trainable weights, optimizer moments, RNG; returns the
    optimizer's JSON part for state.json."""
    from safetensors.torch import save_file

    trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(tmp / "trainable.safetensors"))
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    save_file(tensors or {"_empty": torch.zeros(1)}, str(tmp / "optimizer.safetensors"))
    save_file(rng_tensors(device), str(tmp / "rng_0.safetensors"))
    return {"param_groups": opt["param_groups"], "optimizer_scalars": scalars}


HASHES = "hashes.json"  # sha256 of every file of a checkpoint, written last (before COMPLETE), checked on load


class CorruptCheckpoint(DataError):
    """A checkpoint whose files do not match their recorded hashes (truncated, altered, or missing)."""


def write_hashes(path: Path, accelerator=None) -> None:
    """hashes.json of every file in a checkpoint folder, subfolders too (DeepSpeed's shards sit in pytorch_model/),
    hashed by all ranks in parallel (every rank calls this); the main process writes it."""
    names = distributed.on_main(accelerator, lambda: distributed.files_under(path))
    hashes = distributed.hash_files(path, names, accelerator)
    if accelerator is None or accelerator.is_main_process:
        write_json_atomic(path / HASHES, hashes)


def _recorded_hashes(path: Path) -> dict | None:
    hashes_path = path / HASHES
    if not hashes_path.exists():
        print(f"warning: {path} has no {HASHES} (written by an older deltalearn): cannot verify it", flush=True)
        return None
    try:
        hashes = read_json(hashes_path)
    except DataError as e:
        raise CorruptCheckpoint(hashes_path, f"unreadable ({e})") from None
    if not isinstance(hashes, dict) or not hashes:
        raise CorruptCheckpoint(hashes_path, "expected a JSON object of file name -> sha256")
    if any(".." in Path(n).parts or Path(n).is_absolute() for n in hashes):
        raise CorruptCheckpoint(hashes_path, "names a file outside the checkpoint")
    return hashes


def verify_checkpoint(path: Path, accelerator=None) -> None:
    """Check every file of a checkpoint (subfolders too) against hashes.json; CorruptCheckpoint names the file that
    failed. With several processes every rank calls it: the files are hashed once, split across the ranks, and
    every rank reaches the same verdict."""
    hashes = distributed.on_main(accelerator, lambda: _recorded_hashes(path))
    if hashes is None:
        return
    got_all = distributed.hash_files(path, list(hashes), accelerator, with_size=True)
    for name, want in hashes.items():
        f = path / name
        got = got_all[name]
        if got is None:
            raise CorruptCheckpoint(f, "missing from the checkpoint")
        digest, size = got  # the size read while hashing: another rank may move the file right after
        if digest != want:
            raise CorruptCheckpoint(f, f"content hash mismatch (recorded {str(want)[:12]}..., file is "
                                    f"{digest[:12]}..., {size} bytes): truncated or altered")


def _load_checkpoint(path: Path, model, optimizer, scheduler, accelerator) -> int:
    from safetensors.torch import load_file

    state = read_json(path / "state.json")  # verified by _resume before anything is copied into the model
    if _uses_engine_state(accelerator):
        accelerator.load_state(str(path))
    else:
        weights = load_file(str(path / "trainable.safetensors"))
        params = dict(model.named_parameters())
        missing = [n for n in weights if n not in params]
        if missing:
            raise DataError(path, f"checkpoint has parameters the model lacks (first: {missing[0]}); "
                            "was it made with another model or LoRA setting?")
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t)
        tensors = load_file(str(path / "optimizer.safetensors"))
        opt_state: dict = {}
        for key, v in list(tensors.items()) + list(state["optimizer_scalars"].items()):
            if key == "_empty":
                continue
            idx, name = key.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = v
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    rng = path / f"rng_{accelerator.process_index}.safetensors"
    restore_rng(load_file(str(rng if rng.exists() else path / "rng_0.safetensors")), accelerator.device)
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return int(state["step"])


# Settings that do not change what is trained (only how it is logged, cached or split into micro-batches): a
# rerun may change them. Every other train_config key must match the folder's, or the runs would mix.
RERUN_MAY_CHANGE = frozenset({"log_every", "log_with", "save_every", "keep_checkpoints", "ref_cache",
                              "ref_cache_dir", "micro_batch_size", "gradient_checkpointing", "trust_remote_code",
                              "compile", "tracker_project", "tracker_run_name"})


def pairs_hash(rows: list[dict]) -> str:
    """Identity of the training data: sha256 over the rows' canonical JSON (the rows actually trained on)."""
    import hashlib

    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def check_existing_run(out: Path, config: dict, data_hash: str) -> bool:
    """Refuse to resume or reuse a run folder trained with other settings or data (it would mix two runs under
    one train_config.json). Returns True when the folder holds a finished run of exactly this config + data."""
    saved_path = out / "train_config.json"
    completed = (out / "COMPLETED").exists()
    if not saved_path.exists():
        if completed:
            raise DataError(out, "has a COMPLETED run but no train_config.json, so it cannot be checked against "
                            "this run's settings; use another --out, or delete the folder to retrain")
        return False
    saved = read_json(saved_path)
    new = {**config, "pairs_sha256": data_hash}
    diffs = [f"{k}: folder has {saved.get(k)!r}, this run {new.get(k)!r}" for k in new
             if k not in RERUN_MAY_CHANGE and k in saved and saved.get(k) != new.get(k)]
    if diffs:
        what = "a finished" if completed else "an unfinished"
        raise DataError(out, f"holds {what} run with different settings or data; refusing to "
                        f"{'reuse' if completed else 'resume'} it (" + "; ".join(diffs) +
                        "). Use another --out, or delete the folder to start over")
    return completed


def checkpoints(out_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, newest first."""
    # every save ends by marking its folder COMPLETE (ours, DeepSpeed's or FSDP's), so a half-written one is never
    # picked
    ckpts = [p for p in (out_dir / "checkpoints").glob("step-*")
             if (p / "COMPLETE").exists() and not p.name.endswith(".tmp")]
    ckpts = [p for p in ckpts if p.name.split("-")[-1].isdigit()]
    return sorted(ckpts, key=lambda p: -int(p.name.split("-")[-1]))


def latest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = checkpoints(out_dir)
    return ckpts[0] if ckpts else None


def _resume(out: Path, resume, fallback: bool, load, accelerator=None) -> tuple[Path | None, int]:
    """Load the checkpoint to resume from: `resume`, else the newest. A corrupt one is an error, unless
    `fallback`: then it is set aside as corrupt-step-N and the next older good one is used. With several processes
    the main process lists the checkpoints and alone renames; every rank verifies together (each file hashed once)
    and so reaches the same choice, then loads it."""
    if resume is not None:
        verify_checkpoint(Path(resume), accelerator)
        return Path(resume), load(Path(resume))
    found = distributed.on_main(accelerator, lambda: checkpoints(out))
    for ckpt in found:
        try:
            verify_checkpoint(ckpt, accelerator)  # before anything is copied into the model
        except CorruptCheckpoint as e:
            if not fallback:
                older = [p.name for p in found if p != ckpt]
                raise CorruptCheckpoint(None, f"{e}. Refusing to resume from it. Rerun with --fallback-checkpoint "
                                        "to set it aside and resume from the previous good checkpoint ("
                                        f"{', '.join(older[:3]) or 'none: training restarts from step 0'})") from None

            def set_aside(ckpt=ckpt, e=e):
                aside = ckpt.with_name(f"corrupt-{ckpt.name}")
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(ckpt, aside)
                print(f"warning: {e}; set it aside as {aside.name} and falling back to an older checkpoint",
                      flush=True)

            if distributed.distributed(accelerator):
                # every rank has its verdict before the main process moves the folder (rank 1 still reading
                # step-N while rank 0 renamed it failed 1 launch in ~6)
                accelerator.wait_for_everyone()
            distributed.on_main(accelerator, set_aside)
            continue
        return ckpt, load(ckpt)
    return None, 0


def prune_checkpoints(out: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (0: keep all); returns what was deleted. Folders set
    aside as corrupt and unfinished .tmp saves are not counted and not touched."""
    gone = checkpoints(out)[keep:] if keep > 0 else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def _truncate_metrics(path: Path, last_step: int) -> None:
    """After resuming from step N, drop logged rows past N so no step appears twice."""
    if not path.exists():
        return
    from deltalearn.io import truncate_torn_tail

    truncate_torn_tail(path)
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
    path.write_text("".join(ln + "\n" for ln in keep))


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


def _check_launch_devices() -> None:
    """Under `accelerate launch`, fail before any model loads when the config asks for devices that are not here
    (accelerate would otherwise fall back to CPU processes, or crash per rank on a missing GPU)."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU")
    if use_cpu is None:
        return  # not launched by accelerate
    n, local = os.environ.get("WORLD_SIZE", "?"), int(os.environ.get("LOCAL_RANK", "0"))
    kind = ("FSDP " if os.environ.get("ACCELERATE_USE_FSDP") == "true"
            else "DeepSpeed " if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" else "")
    if kind == "DeepSpeed " and not torch.cuda.is_available():
        # accelerate 1.15 builds a DeepSpeed state only off-CPU; on CPU processes it would silently run plain DDP
        raise ConfigError("a DeepSpeed accelerate config needs GPUs: on CPU processes accelerate ignores it and "
                          "runs plain data parallel; use configs/accelerate/ddp.yaml or fsdp_cpu.yaml here")
    if use_cpu.lower() in ("false", "0") and not torch.cuda.is_available():
        raise ConfigError(f"the {kind}accelerate config asks for {n} GPU processes (use_cpu: false) but this "
                          "machine has no GPU; on CPU use a config with use_cpu: true (configs/accelerate/"
                          "fsdp_cpu.yaml for FSDP)")
    if use_cpu.lower() in ("false", "0") and local >= torch.cuda.device_count():
        raise ConfigError(f"the {kind}accelerate config starts {os.environ.get('LOCAL_WORLD_SIZE', n)} processes on "
                          f"this machine but only {torch.cuda.device_count()} GPUs are visible; lower "
                          "num_processes (or --num_processes)")


def _make_accelerator(cfg: TrainConfig, out: Path):
    from accelerate import Accelerator

    acc = Accelerator(cpu=not torch.cuda.is_available(), log_with=list(cfg.log_with) or None,
                      project_dir=str(out))
    if acc.distributed_type.value == "MULTI_CPU" and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        _fsdp_on_cpu(acc)
    return acc


def _fsdp_on_cpu(acc) -> None:
    """accelerate (1.15) turns an FSDP config into FSDP only on accelerators; on CPU processes it silently runs
    plain data parallel instead. PyTorch's FSDP2 itself runs on CPU with gloo, so switch it on as the config asks:
    `configs/accelerate/fsdp_cpu.yaml` then exercises the same sharded path (prepare, clip, save/load_state,
    get_state_dict) as the GPU config, which is how the tests check it without GPUs."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = AcceleratorState()
    state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* settings the launcher exported
    # both shared states: AcceleratorState() re-copies the process state's type whenever it is constructed again
    PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
    # the MixedPrecisionPolicy accelerate applies on GPUs (param_dtype and reduce_dtype = mixed_precision), so a CPU
    # launch of an FSDP bf16 config computes with the GPU config's bf16 weights
    if state.mixed_precision != "no":
        state.fsdp_plugin.set_mixed_precision(state.mixed_precision)


def deepspeed_settings(dsc: dict, cfg: TrainConfig, n_micro: int) -> dict:
    """The DeepSpeed config entries the recipe decides, written into accelerate's `dsc`: the micro-batch split, and
    the clip always from train.grad_clip (the engine clips: accelerate's clip_grad_norm_ leaves it to DeepSpeed, so a
    value fixed in the launch config, e.g. the shipped `gradient_clipping: 1.0`, would silently override the recipe)."""
    dsc["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    dsc["gradient_accumulation_steps"] = n_micro
    dsc["gradient_clipping"] = cfg.grad_clip
    return dsc


def _apply_lora(model, cfg: TrainConfig):
    try:
        import peft
    except ImportError:
        raise ConfigError("train.lora needs the peft extra: pip install -e '.[peft]' in a clone") from None
    lcfg = peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                           target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
    return peft.get_peft_model(model, lcfg)


def _one_writer(fn):
    """Hold the run folder's lock (deltalearn.locks) for the whole call; in multi-process runs only rank 0 locks."""

    @functools.wraps(fn)
    def locked(cfg, pairs, out_dir, **kw):
        from deltalearn.interrupts import stop_on_signal

        if os.environ.get("RANK", "0") != "0":
            with stop_on_signal():
                return fn(cfg, pairs, out_dir, **kw)
        with artifact_lock(out_dir, what="training run folder"), stop_on_signal():
            return fn(cfg, pairs, out_dir, **kw)

    return locked


@_one_writer
def train(cfg: TrainConfig, pairs, out_dir, *, progress: bool = True, resume: str | Path | None = None,
          accelerator=None, fallback: bool = False, pairs_split: str = "train") -> dict:
    """Preference-tune (or SFT) `cfg.model` on `pairs`; see the module docstring. Returns the run summary."""
    cfg = resolve_train(copy.deepcopy(cfg))
    if not cfg.model:
        raise ConfigError("train.model is required")
    out = Path(out_dir)
    from deltalearn.outputs import claim

    if cfg.log_with:
        trackers.check_trackers(cfg.log_with)  # accelerate would only warn, then log nowhere
    claim(out, "train")  # a user's folder or another artifact is refused before anything is written
    rows, source = load_pair_rows(pairs, LossType(cfg.loss), pairs_split, chosen_key=cfg.chosen_key,
                                  rejected_key=cfg.rejected_key)
    if cfg.max_pairs:
        rows = rows[: cfg.max_pairs]
    data_hash = pairs_hash(rows)
    # tuples (adam_betas) compare equal to the lists JSON gives back
    if check_existing_run(out, json.loads(json.dumps(_asdict(cfg))), data_hash) and resume is None:
        return {**read_json(out / "train_summary.json"), "skipped": True}
    if resume is not None and not Path(resume).exists():
        raise ConfigError(f"resume path does not exist: {resume} (refusing to start a fresh run silently)")
    loss_type = LossType(cfg.loss)
    if accelerator is None:
        _check_launch_devices()
    acc = accelerator or _make_accelerator(cfg, out)
    rank, world, device = acc.process_index, acc.num_processes, acc.device
    # before anything loads: accelerate's mixed precision must not silently replace the recipe's
    distributed.check_launch_precision(acc, "bf16" if use_bf16(cfg.precision, device) else "fp32", cfg.precision)
    per_rank = cfg.batch_size // world if cfg.batch_size % world == 0 else 0
    if per_rank == 0 or per_rank % cfg.micro_batch_size:
        raise ConfigError(f"train.batch_size ({cfg.batch_size}) must be a multiple of micro_batch_size "
                          f"({cfg.micro_batch_size}) x processes ({world})")
    n_micro = per_rank // cfg.micro_batch_size
    ds_plugin = getattr(acc.state, "deepspeed_plugin", None)
    if ds_plugin is not None:
        # DeepSpeed owns accumulation: it steps only at the accumulation boundary and divides each micro-batch's
        # loss by its accumulation count, so tell it our split and undo that division below (untested here:
        # no GPUs on the development machines; the loop's semantics are the same as on CPU).
        deepspeed_settings(ds_plugin.deepspeed_config, cfg, n_micro)
        acc.gradient_accumulation_steps = n_micro
    loss_scale = n_micro if ds_plugin is not None else 1
    t_start = time.time()
    speedups.keep_freed_memory(device)  # a no-op when the model lives on a GPU
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # 1. tokenize
    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    encoded, kept, enc_stats = encode_pairs(tokenizer, rows, max_len=cfg.max_len, source=source,
                                            eos_at_cut=cfg.truncation == "eos_at_cut")
    n = len(encoded)
    if n < cfg.batch_size:
        raise DataError(source, f"{n} usable pairs is fewer than one global batch (batch_size={cfg.batch_size}); "
                        f"lower train.batch_size or add data ({enc_stats.dropped_prompt_too_long} dropped: prompt "
                        f"longer than max_len={cfg.max_len})")
    steps_per_epoch = n // cfg.batch_size
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    precision = "bf16" if use_bf16(cfg.precision, device) else "fp32"
    # the dtype the engine computes in (FSDP/DeepSpeed bf16 cast the weights): the reference must be scored in it
    param_dtype = distributed.planned_param_dtype(acc)
    engine_cast = param_dtype != torch.float32
    auto_size = cfg.compile == "auto" and precision == "bf16"  # the size only matters to "auto" under bf16
    epoch_tokens = sum(len(e.prompt) + len(e.chosen) for e in encoded)
    if loss_type.uses_rejected:
        epoch_tokens += sum(len(e.prompt) + len(e.rejected) for e in encoded)
    with distributed.outside_zero3():
        n_params = models.parameter_count(cfg.model, trust_remote_code=cfg.trust_remote_code) if auto_size else 0
    compiled = speedups.should_compile(cfg.compile, bf16=precision == "bf16", n_params=n_params,
                                       train_tokens=epoch_tokens * total_steps // max(steps_per_epoch, 1),
                                       distributed=world > 1 or ds_plugin is not None,
                                       gradient_checkpointing=cfg.gradient_checkpointing, lora=cfg.lora is not None)
    attention = speedups.attention_for(device, cfg.max_len, compiled)

    # 2. reference log-probs (cached on disk, model freed), or a live reference
    ref = None
    ref_info: dict = {}
    t_ref = time.time()
    ref_name = cfg.reference or cfg.model
    live_ref = None
    # Under an engine that casts the weights (FSDP/DeepSpeed bf16), the reference of an arm whose reference is its
    # own starting point is scored through the prepared module itself before step 1: the same weights, dtype,
    # sharding and micro-batches as the policy, so step 1 is ln 2 exactly. The cache key names the engine's dtype.
    through_policy = engine_cast and cfg.reference in (None, cfg.model)
    ref_precision = precision if not engine_cast else \
        f"{precision}+params-{distributed.dtype_name(param_dtype)}-{acc.distributed_type.value}"
    reference = None
    if loss_type.needs_reference and cfg.ref_cache:
        fp = f"{ref_name}@{models.resolve(ref_name).fingerprint}"

        def loader():
            with distributed.outside_zero3():  # the reference is not the trained model: whole, on every rank
                m, _ = models.load_model(ref_name, device=device, with_tokenizer=False,
                                         dtype=param_dtype if engine_cast else None,
                                         trust_remote_code=cfg.trust_remote_code)
            packing.use_varlen_attention(m, device, precision, cfg.padding_free, cfg.share_prompt)
            if compiled:  # the policy's own kernels: in bf16 they decide the rounding, and step 1 must be ln 2
                speedups.compile_layers(m, attention=attention)
            return m

        # fp32 is batch-invariant to ~1e-6, so it scores in length-sorted batches (least padding); bf16 is not, so
        # it replays the training's micro-batches (reference_layout) and the first loss is ln 2 exactly
        layout = reference_layout(encoded, cfg, total_steps, world) if precision == "bf16" or engine_cast else None
        reference = functools.partial(refcache.reference_logps, loader, encoded, model_fingerprint=fp,
                                      precision=ref_precision, pad_id=pad_id,
                                      batch_size=max(cfg.micro_batch_size * 2, 8), cache_dir=cfg.ref_cache_dir,
                                      accelerator=acc if world > 1 else None, progress=progress, layout=layout,
                                      packing=packing.mode(cfg.padding_free, cfg.share_prompt))
        if not through_policy:
            ref, path, hit = reference()
            ref_info = {"ref_cache": str(path), "ref_cache_hit": hit}
    ref_seconds = time.time() - t_ref

    # 3. policy, optimizer, schedule
    model, _ = models.load_model(cfg.model, with_tokenizer=False, trust_remote_code=cfg.trust_remote_code)
    disable_dropout(model)  # the reference is scored without dropout; the policy must be too (TRL does the same)
    use_cache = model.config.use_cache
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False  # restored before the final save: generation wants its cache
    packing.use_varlen_attention(model, device, precision, cfg.padding_free, cfg.share_prompt)
    if compiled:
        speedups.compile_layers(model, attention=attention)
    if cfg.lora:
        model = _apply_lora(model, cfg)
    if loss_type.needs_reference and not cfg.ref_cache:
        if cfg.lora and cfg.reference is None:
            live_ref = "adapter-disabled"
        else:
            with distributed.outside_zero3():  # in the dtype the engine computes in, like the policy
                live_ref, _ = models.load_model(ref_name, device=device, with_tokenizer=False,
                                                dtype=param_dtype if engine_cast else None,
                                                trust_remote_code=cfg.trust_remote_code)
            packing.use_varlen_attention(live_ref, device, precision, cfg.padding_free, cfg.share_prompt)
            # wrapped once: the wrapper checks its lean head on its first forward, not on every micro-batch's
            live_ref = ResponseLogProbs(live_ref.eval().requires_grad_(False))
    model.train()
    # ZeRO-3 gathers a weight only inside its module's forward; the lean head reads lm_head.weight outside it
    zero3 = ds_plugin is not None and int(ds_plugin.zero_stage or 0) == 3
    scorer = ResponseLogProbs(model, lean=not zero3)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all tensors (4x faster than the per-tensor loop on CPU); FSDP/DeepSpeed shard the
    # parameters into DTensors / flat buffers and keep the default implementation
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                                  fused=not _uses_engine_state(acc) or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, cfg.warmup_ratio,
                                                                      cfg.min_lr_ratio))
    scorer, optimizer = acc.prepare(scorer, optimizer)
    # clip over the prepared module's own parameters: FSDP replaces them with shards, and accelerate's sharded
    # clip applies only when handed exactly `model.parameters()` (frozen ones have no grad and are skipped)
    clip_params = list(scorer.parameters())
    if reference is not None and through_policy:  # before any checkpoint is loaded: the policy is its start
        t_ref = time.time()

        def score_batch(batch):
            with autocast_context(precision, device):
                return scorer(batch.input_ids, batch.attention_mask, batch.loss_mask)

        ref, path, hit = reference(score_prepared=score_batch)
        ref_info = {"ref_cache": str(path), "ref_cache_hit": hit}
        ref_seconds += time.time() - t_ref

    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    start_step = 0
    ckpt, start_step = _resume(out, resume, fallback, lambda c: _load_checkpoint(
        c, acc.unwrap_model(scorer).model, optimizer, scheduler, acc), acc)
    if ckpt is not None:
        if acc.is_main_process:
            _truncate_metrics(metrics_path, start_step)
    elif acc.is_main_process and metrics_path.exists():
        metrics_path.unlink()  # a fresh start: no stale rows from an earlier, unfinished run
    if acc.is_main_process:
        write_json_atomic(out / "train_config.json", {**_asdict(cfg), "pairs_source": source, "pairs": n,
                                                      "pairs_sha256": data_hash,
                                                      "processes": world, "precision_resolved": precision})

    log = JsonlAppender(metrics_path, fsync=False) if acc.is_main_process else None
    if cfg.log_with:
        project, run_name = trackers.tracker_names(out, cfg.tracker_project, cfg.tracker_run_name)
        acc.init_trackers(project, config={k: v for k, v in _asdict(cfg).items() if not isinstance(v, (dict, list))},
                          init_kwargs=trackers.init_kwargs(cfg.log_with, run_name))
    bar = None
    if progress and acc.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc=f"train {cfg.loss}", unit="step")
    reduction = loss_type.reduction
    loss_value = float("nan")
    t_train = time.time()
    tokens_seen = 0
    for step in range(start_step, total_steps):
        t0 = time.time()
        gidx = step_indices(n, cfg.batch_size, step, cfg.seed, cfg.shuffle)
        micro = micro_batches(encoded, gidx, rank, world, cfg.micro_batch_size)
        sft_tokens = sum(len(encoded[i].chosen) for i in gidx)  # trained tokens in the whole global batch
        agg = torch.zeros(7, dtype=torch.float64)  # loss, r_c, r_r, acc, lp_c, lp_r, tokens
        for j, mb in enumerate(micro):
            batch = micro_batch(encoded, mb, pad_id=pad_id, with_rejected=loss_type.uses_rejected,
                                padding_free=cfg.padding_free, share_prompt=cfg.share_prompt).to(device)
            k = len(mb)
            last = j == len(micro) - 1
            # DeepSpeed steps its optimizer on every backward flagged sync_gradients (accelerate's default: True);
            # only the step's last micro-batch may be, as in the HF Trainer
            acc.gradient_state._set_sync_gradients(last)
            sync = contextlib.nullcontext() if last else acc.no_sync(scorer)
            with sync:
                with autocast_context(precision, device):
                    sums, counts = scorer(**batch.as_kwargs())
                sums, counts = sums.float(), counts.float()
                if loss_type.uses_rejected:
                    pc, pr = reduce_logps(sums[:k], counts[:k], reduction), reduce_logps(sums[k:], counts[k:], reduction)
                    rc = rr = None
                    if loss_type.needs_reference:
                        rc, rr = _reference_for(mb, ref, live_ref, scorer, acc, batch, k, reduction, precision,
                                                device)
                    losses, r_c, r_r = preference_loss(loss_type, pc, pr, rc, rr, beta=cfg.beta,
                                                       gamma_beta_ratio=cfg.gamma_beta_ratio,
                                                       label_smoothing=cfg.label_smoothing)
                    loss = losses.sum() * world / cfg.batch_size
                    if cfg.nll_coef:
                        loss = loss + cfg.nll_coef * world * sft_loss(sums[:k], counts[:k], sft_tokens)
                    agg += torch.tensor([losses.sum().item(), r_c.sum().item(), r_r.sum().item(),
                                         (r_c > r_r).sum().item(), pc.sum().item(), pr.sum().item(),
                                         batch.n_tokens], dtype=torch.float64)
                else:
                    loss = sft_loss(sums[:k], counts[:k], sft_tokens) * world
                    lp = reduce_logps(sums[:k], counts[:k], "mean")
                    agg += torch.tensor([-sums[:k].sum().item() / max(sft_tokens, 1) * cfg.batch_size, 0, 0, 0,
                                         lp.sum().item(), 0, batch.n_tokens], dtype=torch.float64)
                acc.backward(loss * loss_scale)
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = acc.clip_grad_norm_(clip_params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            agg = acc.reduce(agg.to(device), reduction="sum").cpu()
        tokens_seen += int(agg[6])
        dt = time.time() - t0
        b = cfg.batch_size
        loss_value = float(agg[0] / b)
        row = {"step": step + 1, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
               "grad_norm": float(grad_norm) if grad_norm is not None else None,
               "tokens": int(agg[6]), "tokens_per_s": float(agg[6] / dt), "step_s": dt}
        if loss_type.uses_rejected:
            row.update({"rewards/chosen": float(agg[1] / b), "rewards/rejected": float(agg[2] / b),
                        "rewards/margin": float((agg[1] - agg[2]) / b), "rewards/accuracy": float(agg[3] / b),
                        "logps/chosen": float(agg[4] / b), "logps/rejected": float(agg[5] / b)})
        else:
            row["logps/chosen"] = float(agg[4] / b)
        if log is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == total_steps):
            log.write(row)
            if cfg.log_with:
                acc.log({k: v for k, v in row.items() if v is not None and k != "step"}, step=step + 1)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.4f}", **({"acc": f"{row['rewards/accuracy']:.2f}"}
                                                         if "rewards/accuracy" in row else {}))
            bar.update(1)
        saved = cfg.save_every and (step + 1) % cfg.save_every == 0
        stop = step + 1 < total_steps and interrupts.requested(acc)  # SIGINT/SIGTERM: checkpoint here, then stop
        if (saved or stop) and step + 1 < total_steps:
            _save_checkpoint(out / "checkpoints" / f"step-{step + 1}", acc.unwrap_model(scorer).model, optimizer,
                             scheduler, step + 1, acc)
            if acc.is_main_process:
                prune_checkpoints(out, cfg.keep_checkpoints)
        if stop:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
            raise interrupts.interrupted(step + 1, total_steps, out / "checkpoints" / f"step-{step + 1}")
    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
    if cfg.log_with:
        acc.end_training()
    train_seconds = time.time() - t_train

    # 5. final model + summary
    summary = {"steps": total_steps, "resumed_from": start_step, "pairs": n, "loss": cfg.loss, "beta": cfg.beta,
               "final_loss": loss_value, "precision": precision, "compiled": compiled, "processes": world,
               "param_dtype": distributed.dtype_name(param_dtype),
               "wall_s": time.time() - t_start, "ref_s": ref_seconds, "train_s": train_seconds,
               "tokens_per_s": tokens_seen / max(train_seconds, 1e-9), "encode_stats": enc_stats.as_dict(),
               "model_dir": str(out / "model"), "metrics_path": str(metrics_path), **ref_info,
               "saved_dtype": saved_dtype(cfg.save_dtype, precision)}
    # Under ZeRO-3/FSDP each rank holds only shards: gather the full weights (a collective, so every rank calls it)
    state = acc.get_state_dict(scorer) if _uses_engine_state(acc) else None
    if acc.is_main_process:
        final = acc.unwrap_model(scorer).model
        if state is not None:
            state = {k.removeprefix("model."): v for k, v in state.items()}
            if cfg.lora:  # merge into a plain (unsharded) copy, built whole: this runs on the main process alone
                with distributed.outside_zero3():
                    final, _ = models.load_model(cfg.model, with_tokenizer=False,
                                                 trust_remote_code=cfg.trust_remote_code)
                final = _apply_lora(final, cfg)
                final.load_state_dict(state)
                state = None
            else:  # gathered copies no longer share storage, so save_pretrained would write a tied head twice
                aliases = tied_aliases(final)
                state = {k: v for k, v in state.items() if k not in aliases}
        final.config.use_cache = use_cache  # gradient checkpointing's use_cache=False is a training setting
        if cfg.lora:
            final.save_pretrained(out / "adapter")
            ordinary_permissions(out / "adapter")
            final = final.merge_and_unload()
        # Into a temporary folder, then renamed: a kill or a full disk never leaves a half-written model/.
        tmp_model = out / ".model.tmp"
        shutil.rmtree(tmp_model, ignore_errors=True)
        if summary["saved_dtype"] == "bf16":  # the form a bf16-trained model is used in, at half the size
            final = final.to(torch.bfloat16)
            state = {k: v.to(torch.bfloat16) for k, v in state.items()} if state else state
        final.save_pretrained(tmp_model, safe_serialization=True, **({"state_dict": state} if state else {}))
        tokenizer.save_pretrained(tmp_model)
        cards.write_model_card(tmp_model, _asdict(cfg), summary, pairs_source=source, pairs_sha256=data_hash,
                               name=out.resolve().name)
        ordinary_permissions(tmp_model)
        shutil.rmtree(out / "model", ignore_errors=True)
        os.replace(tmp_model, out / "model")
        write_json_atomic(out / "train_summary.json", summary)
        (out / "COMPLETED").write_text("ok\n")
    acc.wait_for_everyone()
    return summary


def saved_dtype(setting: str, precision: str) -> str:
    """train.save_dtype resolved: auto saves the training precision's natural form (bf16 after bf16 training)."""
    return precision if setting == "auto" else setting


def tied_aliases(model) -> set[str]:
    """Names under which a parameter appears a second time (a tied LM head: `lm_head.weight`, the alias of
    `model.embed_tokens.weight`), the same names save_pretrained leaves out of a one-process save."""
    seen, aliases = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases.add(name)
        seen.add(id(p))
    return aliases


def disable_dropout(model) -> None:
    """Zero every dropout of a model: nn.Dropout modules and the float rates attention layers keep as attributes
    (Llama's `attention_dropout` is applied inside the attention call whenever the module is in train mode)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for name, value in list(vars(m).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(m, name, 0.0)
    for c in (getattr(model, "config", None), getattr(getattr(model, "config", None), "text_config", None)):
        for name, value in (vars(c).items() if c is not None else ()):
            if "dropout" in name and isinstance(value, float):
                setattr(c, name, 0.0)


def _reference_for(mb, ref, live_ref, scorer, acc, batch, k, reduction, precision, device):
    """Reference log-probs (already reduced) for a micro-batch: from the cache, or a live no-grad forward."""
    if ref is not None:
        idx = torch.tensor(mb, dtype=torch.long)
        rc = reduce_logps(ref["chosen_sum"][idx], ref["chosen_n"][idx], reduction).to(device)
        rr = reduce_logps(ref["rejected_sum"][idx], ref["rejected_n"][idx], reduction).to(device)
        return rc, rr
    with torch.no_grad(), autocast_context(precision, device):
        if live_ref == "adapter-disabled":
            # through the prepared module itself, so FSDP unshards its root parameters as in the policy forward
            with acc.unwrap_model(scorer).model.disable_adapter():
                s, c = scorer(**batch.as_kwargs())
        else:
            s, c = live_ref(**batch.as_kwargs())
    s, c = s.float(), c.float()
    return reduce_logps(s[:k], c[:k], reduction), reduce_logps(s[k:], c[k:], reduction)


def _asdict(cfg: TrainConfig) -> dict:
    from deltalearn.recipe import to_dict

    return to_dict(cfg)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def add_cli_args(p) -> None:
    p.add_argument("recipe", nargs="?", help="recipe YAML whose train section to use (optional)")
    p.add_argument("--pairs", required=True,
                   help="pairs: a file or folder (prompt/chosen/rejected), or a Hub dataset id ORG/NAME; TRL's "
                        "implicit-prompt rows (whole conversations in chosen/rejected) are read too")
    p.add_argument("--pairs-split", default="train", help="the split of a Hub dataset --pairs")
    p.add_argument("--out", required=True, help="output folder (metrics.jsonl, model/, checkpoints/)")
    p.add_argument("--model", help="model to tune (overrides train.model; default: the recipe's)")
    p.add_argument("--loss", choices=[t.value for t in LossType],
                   help="overrides train.loss (default: the recipe's, else dpo_norm)")
    p.add_argument("--resume", help="resume from this checkpoint folder (default: the latest in --out)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None,
                   help="overrides train.precision (default: the recipe's, else auto: bf16 autocast where the "
                        "device has fast bf16)")
    p.add_argument("--seed", type=int, default=None,
                   help="overrides train.seed (data order and init of LoRA; default: the recipe's, else 0)")
    p.add_argument("--push-to-hub", metavar="REPO",
                   help="upload model/ (with its model card) to this Hub repository when training ends; checked "
                        "before training starts (logged in, Hub reachable); default: no upload")
    p.add_argument("--chosen-key", default=None, help="a pairs file in the authors' released layout (one "
                   "conversation column per model): the chosen column, e.g. qwen-2.5-3b-instruct (train.chosen_key; "
                   "default: the recipe's, else a `chosen` column)")
    p.add_argument("--rejected-key", default=None, help="its rejected column, e.g. qwen-2.5-1.5b-instruct "
                   "(train.rejected_key; default: the recipe's, else a `rejected` column)")
    p.add_argument("--fallback-checkpoint", action="store_true",
                   help="if the latest checkpoint is corrupt, set it aside and resume from the previous good one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.beta=5 (repeatable; default: none)")
    from deltalearn.cliargs import add_no_progress

    add_no_progress(p)


def train_overrides_only(overrides: list[str]) -> None:
    """`deltalearn train` reads only the recipe's train section, so a `--set` of any other key would be accepted
    and do nothing: refuse it, naming the train.* key the user probably meant."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if "=" in text and not key.startswith("train."):
            leaf = key.split(".")[-1]
            hint = f"; did you mean train.{leaf}?" if leaf in TrainConfig.__dataclass_fields__ else ""
            hint = hint or hf_name_hint(key)
            raise ConfigError(f"--set {text}: `deltalearn train` reads only train.* keys (the other sections are "
                              f"for `deltalearn run`){hint}")


def run_cli(args) -> int:
    from deltalearn.recipe import load_recipe

    train_overrides_only(args.overrides)
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"train.model={args.model}")
    if args.loss:
        overrides.append(f"train.loss={args.loss}")
    if args.precision:
        overrides.append(f"train.precision={args.precision}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    for key in ("chosen_key", "rejected_key"):  # column names are strings, whatever YAML would read them as
        if getattr(args, key):
            overrides.append(f"train.{key}={json.dumps(getattr(args, key))}")
    recipe = load_recipe(args.recipe, overrides)
    if args.push_to_hub:
        from deltalearn import hub

        hub.check_push(args.push_to_hub)
    summary = train(recipe.train, args.pairs, args.out, progress=not args.no_progress, resume=args.resume,
                    fallback=args.fallback_checkpoint, pairs_split=args.pairs_split)
    if summary.pop("skipped", False):
        print(f"deltalearn train: {args.out} already holds this finished run (same settings and data); skipped "
              "training and printed its summary (delete the folder to train again)", file=sys.stderr)
    # 4 significant digits on screen (train_summary.json keeps full precision)
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in summary.items()
                      if k != "encode_stats"}, indent=2))
    if args.push_to_hub:
        from deltalearn import hub

        url = hub.push_folder(Path(args.out) / "model", args.push_to_hub)
        print(f"deltalearn train: pushed {Path(args.out) / 'model'} to {url}", file=sys.stderr)
    return 0
