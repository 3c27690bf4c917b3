"""The lab's model ladder: small Llama models pretrained from scratch on the task, rungs chosen by dev accuracy.

The paper needs a family of models of increasing quality (Qwen2.5 0.5B ... 72B) and a student above the teachers
it learns from (Section 4, "Main recipe"; Section 5, the 21-pair sweep). Here each *run* trains one model size on
fresh train-split problems (plain next-token training on the worked solution: this is pretraining, not preference
tuning, so it is its own small loop), saving a checkpoint and measuring greedy dev accuracy every `eval_every`
steps. Capability jumps sharply with steps (tiny-lab notes: 10% -> 91% within 150 steps, and seeds differ), so the
ladder is not "size at a fixed step": each rung is the checkpoint whose dev accuracy is closest to a target.
The student is the final checkpoint of its own long run, trained with a decaying lr until dev accuracy stops
rising (its plateau), so that extra SFT on correct solutions no longer lifts it much (the experiments measure that).

Runs are independent, so two run at once, one thread each (2-core machine). Everything is cached in the lab
folder (`models.lab_home()`): `ladder.json` records the config hash, the curves and the chosen rungs; a later
call with the same config reuses it, and a finished run is never retrained.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deltalearn.io import ordinary_permissions, read_json, sha256_json, write_json_atomic
from deltalearn.lab import task
from deltalearn.recipe import ConfigError

LADDER_FILE = "ladder.json"


@dataclass
class RunSpec:
    """One pretraining run: a model size and its training budget."""

    name: str
    hidden: int
    layers: int
    steps: int
    lr: float = 3e-3
    """Peak AdamW lr (tiny-lab notes: 3e-3 works at these sizes), cosine decay to lr/10 after warmup."""
    warmup: int = 30
    batch: int = 64
    """Fresh train-split problems per step."""
    eval_every: int = 50
    seed: int = 0
    heads: int = 4
    init_from: str = ""
    """Start from the final checkpoint of this (earlier-listed) run instead of from scratch: more training for a
    run that was still rising when its schedule ended. Size fields must match that run's."""


@dataclass
class LadderConfig:
    runs: list[RunSpec] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    """Dev accuracy each teacher rung should have, increasing; rung i is named `r{i+1}`."""
    student_run: str = ""
    """The run whose final checkpoint is the student (named `student`)."""
    student_step: int = 0
    """Another checkpoint of `student_run` as the student (0: the final one), e.g. an under-trained student that
    SFT on correct solutions still lifts. The runs are not retrained: only `lab:student` is re-installed."""
    teacher_runs: list[str] = field(default_factory=list)
    """Runs whose checkpoints may become rungs (default: all). Naming other runs than the student's keeps the
    teachers one family and the student a separate model."""
    dev_size: int = 400
    """Dev prompts used to score checkpoints (and nothing else is chosen on the eval split)."""
    workers: int = 2
    task: str = task.NAME
    """The lab task the runs learn (set from `experiment.task`, not from the ladder section)."""
    name: str = ""
    """Sub-folder of the lab folder for this ladder (models `lab:NAME/r1`); empty: the lab folder itself
    (`lab:r1` ... `lab:student`)."""
    teacher_pool: int = 1
    """Independently seeded copies of the teacher runs behind each rung (1: one run's checkpoints). Copy k >= 1
    is every teacher run again with seed + k, named `{run}s{k}`; its rungs `r1s{k}` ... are chosen by the same
    targets. The experiments then draw each rung's responses from its copies in turn, so that a rung's per-key
    quirks (one run's checkpoint losing a key an earlier one knew) average out over K runs (issue 14)."""
    pool_tolerance: float = 0.1
    """A copy's rung may differ from the seed-0 rung's dev accuracy by at most this much; a copy whose run jumps
    past a target between two checkpoints (measured: a d64 seed went 25% -> 65% -> 98% in 40 steps) would put a
    far better model into a weak rung, so that is an error, not a silent mix."""

    def teacher_names(self) -> list[str]:
        """The seed-0 runs whose checkpoints may become rungs (`teacher_runs`, or every run)."""
        return list(self.teacher_runs) or [r.name for r in self.runs]

    def all_runs(self) -> list[RunSpec]:
        """The recipe's runs, then the teacher runs' seeded copies (teacher_pool > 1)."""
        teachers = self.teacher_names()
        copies = [RunSpec(**dict(asdict(r), name=f"{r.name}s{k}", seed=r.seed + k,
                                 init_from=f"{r.init_from}s{k}" if r.init_from else ""))
                  for k in range(1, self.teacher_pool) for r in self.runs if r.name in teachers]
        return list(self.runs) + copies

    def validate(self) -> "LadderConfig":
        task.get_task(self.task)
        names = [r.name for r in self.runs]
        if not self.runs:
            raise ConfigError("experiment.ladder.runs: at least one run is needed")
        if len(set(names)) != len(names):
            raise ConfigError(f"experiment.ladder.runs: duplicate run names {names}")
        if not set(self.teacher_runs) <= set(names):
            raise ConfigError(f"experiment.ladder.teacher_runs: {sorted(set(self.teacher_runs) - set(names))} are not "
                              f"runs ({names})")
        if self.student_run not in names:
            raise ConfigError(f"experiment.ladder.student_run: {self.student_run!r} is not one of the runs {names}")
        if self.teacher_pool < 1:
            raise ConfigError(f"experiment.ladder.teacher_pool must be >= 1, got {self.teacher_pool}")
        if any(b <= a for a, b in zip(self.targets, self.targets[1:])) or not self.targets:
            raise ConfigError(f"experiment.ladder.targets must be increasing dev accuracies, got {self.targets}")
        for i, r in enumerate(self.runs):
            parent = next((p for p in self.runs[:i] if p.name == r.init_from), None)
            if r.init_from and (parent is None or (parent.hidden, parent.layers, parent.heads) !=
                                (r.hidden, r.layers, r.heads)):
                raise ConfigError(f"experiment.ladder.runs[{r.name}].init_from must name an earlier run of the same "
                                  "size")
            if r.name == self.student_run and self.student_step and (
                    self.student_step > r.steps or (self.student_step % r.eval_every and self.student_step != r.steps)):
                raise ConfigError(f"experiment.ladder.student_step: {self.student_step} is not a checkpoint of run "
                                  f"{r.name} (every {r.eval_every} steps up to {r.steps})")
            if r.hidden % r.heads or r.steps < r.eval_every or r.eval_every < 1:
                raise ConfigError(f"experiment.ladder.runs[{r.name}]: hidden must divide by heads and "
                                  f"steps >= eval_every >= 1")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "LadderConfig":
        d = dict(d)
        unknown = set(d) - {"runs", "targets", "student_run", "student_step", "teacher_runs", "dev_size", "workers",
                            "name", "teacher_pool", "pool_tolerance"}
        if unknown:
            raise ConfigError(f"experiment.ladder: unknown keys {sorted(unknown)}")
        runs = []
        for i, r in enumerate(d.pop("runs", [])):
            try:
                runs.append(RunSpec(**r))
            except TypeError as e:
                raise ConfigError(f"experiment.ladder.runs[{i}]: {e}") from None
        return cls(runs=runs, **d).validate()


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------


def build_model(spec: RunSpec, tok):
    """A fresh LlamaForCausalLM of the run's size (4 heads, tied embeddings, SwiGLU width 4x hidden)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=4 * spec.hidden,
                      num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                      num_key_value_heads=spec.heads, max_position_embeddings=128, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg)


def _char_ids(v: dict, text: str) -> list[int]:
    """Ids of a task string: one per character, `Answer:` as one token (the tokenizer's pre-tokenizer)."""
    out = []
    for i, part in enumerate(text.split("Answer:")):
        if i:
            out.append(v["Answer:"])
        out += [v[ch] for ch in part]
    return out


def fast_ids(tok, p) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) exactly as `tokenize.prompt_ids` / `response_ids` give them (a test checks),
    without rendering the chat template: pretraining tokenizes ~64 problems per step."""
    v = tok.get_vocab()
    return [tok.bos_token_id] + _char_ids(v, p.prompt), _char_ids(v, p.solution) + [tok.eos_token_id]


def _batch(tok, problems: list):
    """Left-padded prompt+solution ids with labels on the solution and its EOS only (the prompt's digits are
    random, so predicting them is noise)."""
    import torch

    seqs, labels = [], []
    for p in problems:
        pi, ri = fast_ids(tok, p)
        seqs.append(pi + ri)
        labels.append([-100] * len(pi) + ri)
    n = max(map(len, seqs))
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (n - len(s)) + s for s in seqs])
    lab = torch.tensor([[-100] * (n - len(s)) + s for s in labels])
    att = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in seqs])
    return ids, att, lab


def greedy_accuracy(model, tok, problems: list, *, batch_size: int = 200,
                    max_new_tokens: int = 64, task_name: str = task.NAME) -> float:
    """Greedy accuracy (the task's grade: exact answer, or fraction of items right), for choosing checkpoints
    inside pretraining (the experiments themselves evaluate through `deltalearn.generate`)."""
    import torch

    from deltalearn.tokenize import prompt_ids

    grade = task.get_task(task_name).grade
    model.eval()
    correct = 0.0
    with torch.no_grad():
        for i in range(0, len(problems), batch_size):
            chunk = problems[i:i + batch_size]
            seqs = [prompt_ids(tok, p.prompt) for p in chunk]
            n = max(map(len, seqs))
            ids = torch.tensor([[tok.pad_token_id] * (n - len(s)) + s for s in seqs])
            att = (ids != tok.pad_token_id).long()
            out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            for p, row in zip(chunk, out[:, n:]):
                correct += grade(tok.decode(row, skip_special_tokens=True), p.answer)
    model.train()
    return correct / max(1, len(problems))


# ---------------------------------------------------------------------------------------------------------
# One run (executes in its own process, one thread)
# ---------------------------------------------------------------------------------------------------------


def run_dir(lab_dir: Path, spec: RunSpec, task_name: str = task.NAME) -> Path:
    """A run's folder, keyed by its settings and task (an unset `init_from` and the default task are left out of
    the key: the running-sum ladder keeps its cache)."""
    key = {k: v for k, v in asdict(spec).items() if not (k == "init_from" and not v)}
    if task_name != task.NAME:
        key["task"] = task_name
    return lab_dir / "runs" / f"{spec.name}-{sha256_json(key)[:8]}"


def pretrain(spec: RunSpec, lab_dir: str, dev_size: int, position: int = 0, threads: int = 1,
             init_path: str = "", progress: bool = True, task_name: str = task.NAME) -> dict:
    """Train one run, checkpointing and scoring dev accuracy every `eval_every` steps. Returns its curve.
    A finished run (curve.json present) is not retrained."""
    import torch
    from tqdm.auto import tqdm

    from deltalearn.lab.tokenizer import build_tokenizer

    T = task.get_task(task_name)
    out = run_dir(Path(lab_dir), spec, task_name)
    done = out / "curve.json"
    if done.exists():
        return read_json(done)
    torch.set_num_threads(threads)
    if out.exists():
        shutil.rmtree(out)  # an interrupted run restarts: it takes minutes and fresh data makes resume moot
    out.mkdir(parents=True)
    tok = build_tokenizer()
    if init_path:
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(init_path)
    else:
        model = build_model(spec, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return spec.lr * (step + 1) / spec.warmup
        frac = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    rng = random.Random(f"pretrain:{spec.name}:{spec.seed}")
    dev = T.sample_problems("dev", dev_size, seed=0)
    curve, t0 = [], time.time()
    bar = tqdm(range(spec.steps), desc=f"ladder {spec.name} (d{spec.hidden} L{spec.layers})", position=position,
               leave=True, dynamic_ncols=True, disable=not progress)
    model.train()
    for step in bar:
        ids, att, lab = _batch(tok, [T.random_problem(rng, "train") for _ in range(spec.batch)])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % spec.eval_every == 0 or step + 1 == spec.steps:
            acc = greedy_accuracy(model, tok, dev, task_name=task_name)
            ck = out / f"step-{step + 1}"
            model.save_pretrained(ck)
            ordinary_permissions(ck)
            curve.append({"step": step + 1, "dev_acc": acc, "loss": loss.item(), "path": str(ck),
                          "elapsed_s": round(time.time() - t0, 1)})
            bar.set_postfix(loss=f"{loss.item():.3f}", dev=f"{acc:.1%}")
    bar.close()
    result = {"run": asdict(spec), "curve": curve, "wall_s": round(time.time() - t0, 1),
              "params": sum(p.numel() for p in model.parameters())}
    write_json_atomic(done, result)
    return result


# ---------------------------------------------------------------------------------------------------------
# The ladder
# ---------------------------------------------------------------------------------------------------------


def student_point(curves: list[dict], student_run: str, student_step: int = 0) -> dict:
    """The student's checkpoint record: `student_step` of its run, or the run's final checkpoint."""
    curve = next(c for c in curves if c["run"]["name"] == student_run)["curve"]
    return curve[-1] if not student_step else next(pt for pt in curve if pt["step"] == student_step)


def select_rungs(curves: list[dict], targets: list[float], student_run: str,
                 teacher_runs: list[str] | None = None, student_step: int = 0) -> list[dict]:
    """For each target dev accuracy (increasing), the unused checkpoint closest to it, from `teacher_runs` (all
    when empty), excluding the student's checkpoint. Ties go to the earlier-listed run and step. Rungs come back
    ordered by dev accuracy."""
    cands = [(c["run"]["name"], pt) for c in curves for pt in c["curve"]
             if not teacher_runs or c["run"]["name"] in teacher_runs]
    student_path = student_point(curves, student_run, student_step)["path"]
    cands = [(n, pt) for n, pt in cands if pt["path"] != student_path]
    used, rungs = set(), []
    for t in targets:
        free = [(n, pt) for n, pt in cands if pt["path"] not in used]
        if not free:
            raise ConfigError(f"experiment.ladder: not enough checkpoints for {len(targets)} rungs")
        n, pt = min(free, key=lambda x: abs(x[1]["dev_acc"] - t))
        used.add(pt["path"])
        rungs.append({"run": n, "step": pt["step"], "dev_acc": pt["dev_acc"], "target": t, "path": pt["path"]})
    rungs.sort(key=lambda r: r["dev_acc"])
    for i, r in enumerate(rungs):
        r["name"] = f"r{i + 1}"
    return rungs


def check_pool(rungs: list[dict], copies: list[dict], curves: list[dict], tolerance: float) -> None:
    """Every seeded copy's rung (`r4s1`) within `tolerance` dev accuracy of its seed-0 rung (`r4`), else a
    ConfigError naming the copy and its dev curve."""
    for c in copies:
        r = next(x for x in rungs if x["name"] == c["name"].rsplit("s", 1)[0])
        if abs(c["dev_acc"] - r["dev_acc"]) > tolerance:
            curve = next(x for x in curves if x["run"]["name"] == c["run"])["curve"]
            raise ConfigError(
                f"experiment.ladder.teacher_pool: rung {c['name']} (run {c['run']} step {c['step']}) is at "
                f"{c['dev_acc']:.1%} dev against {r['name']}'s {r['dev_acc']:.1%}, more than pool_tolerance "
                f"{tolerance:g} apart: that copy has no checkpoint near the target (dev curve "
                f"{[round(p['dev_acc'], 2) for p in curve]}); use fewer copies, a smaller eval_every, or a larger "
                "pool_tolerance")


def _install(src: str, dst: Path, tok) -> None:
    """Copy a checkpoint into the lab folder as a loadable HF model folder (weights + tokenizer). A rung that
    already holds this checkpoint is left alone: its files' identity (size + mtime) is what generation resume and
    the reference cache key on."""
    import json

    if (dst / "SOURCE.json").exists() and json.loads((dst / "SOURCE.json").read_text()).get("checkpoint") == src:
        return
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.json").write_text(json.dumps({"checkpoint": src}))
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def build_ladder(cfg: LadderConfig, lab_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Train (or reuse) every run, choose the rungs, and install them as `lab:r1..rN` and `lab:student`.
    Returns the ladder record (also written to LAB_DIR/ladder.json)."""
    from deltalearn.lab.tokenizer import build_tokenizer
    from deltalearn.models import lab_home

    cfg.validate()
    lab = (Path(lab_dir) if lab_dir is not None else lab_home()) / cfg.name
    lab.mkdir(parents=True, exist_ok=True)
    config = {"runs": [asdict(r) for r in cfg.runs], "targets": cfg.targets, "student_run": cfg.student_run,
              "teacher_runs": cfg.teacher_runs, "dev_size": cfg.dev_size,
              # unset / default: earlier hashes stay valid
              **({"student_step": cfg.student_step} if cfg.student_step else {}),
              **({"task": cfg.task} if cfg.task != task.NAME else {}),
              **({"teacher_pool": cfg.teacher_pool, "pool_tolerance": cfg.pool_tolerance}
                 if cfg.teacher_pool > 1 else {})}
    key = sha256_json(config)
    record_path = lab / LADDER_FILE
    if record_path.exists():
        rec = read_json(record_path)
        if rec.get("config_hash") == key and all((lab / n / "config.json").exists() for n in rec["models"]):
            rec["cached"] = True
            return rec
    t0 = time.time()
    # finished runs are read back here; the others train longest first, `workers` at a time, one thread each
    runs = cfg.all_runs()
    todo = sorted([r for r in runs if not (run_dir(lab, r, cfg.task) / "curve.json").exists()
                   and not r.init_from],
                  key=lambda r: -r.steps * r.hidden ** 2 * r.layers)
    if cfg.workers > 1 and len(todo) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=mp.get_context("spawn")) as ex:
            futs = [ex.submit(pretrain, r, str(lab), cfg.dev_size, i, progress=progress, task_name=cfg.task)
                    for i, r in enumerate(todo)]
            for f in futs:
                f.result()
    else:
        for r in todo:
            pretrain(r, str(lab), cfg.dev_size, 0, threads=1, progress=progress, task_name=cfg.task)
    curves = []
    for r in runs:  # continuations after their parent run; then everything is cached, in the recipe's order
        parent = next((c for c in curves if c["run"]["name"] == r.init_from), None) if r.init_from else None
        curves.append(pretrain(r, str(lab), cfg.dev_size, init_path=parent["curve"][-1]["path"] if parent else "",
                               progress=progress, task_name=cfg.task))
    rungs = select_rungs(curves, cfg.targets, cfg.student_run, cfg.teacher_names(), cfg.student_step)
    student = dict(student_point(curves, cfg.student_run, cfg.student_step), run=cfg.student_run, name="student")
    copies = []  # each seeded copy's own rungs, by the same targets: r1s1 ... (teacher_pool > 1)
    for k in range(1, cfg.teacher_pool):
        for r in select_rungs(curves, cfg.targets, cfg.student_run, [f"{n}s{k}" for n in cfg.teacher_names()]):
            copies.append(dict(r, name=f"{r['name']}s{k}"))
    check_pool(rungs, copies, curves, cfg.pool_tolerance)
    tok = build_tokenizer()
    for r in rungs + copies + [student]:
        _install(r["path"], lab / r["name"], tok)
    rec = {"config_hash": key, "config": config,
           "rungs": rungs, "student": student, "models": [r["name"] for r in rungs + copies] + ["student"],
           "curves": curves, "wall_s": round(time.time() - t0, 1), "cached": False}
    if copies:
        rec["pool_rungs"] = copies
        rec["pool"] = {r["name"]: [r["name"]] + [f"{r['name']}s{k}" for k in range(1, cfg.teacher_pool)]
                       for r in rungs}
    write_json_atomic(record_path, rec)
    return rec
