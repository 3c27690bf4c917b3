"""The paper's semantic-delta experiments in the tiny lab, through the project's own generate / train code.

Every arm is: pairs built from generations of ladder rungs (`deltalearn.generate.generate_responses`), one
`deltalearn.train.train` run on the student, and a greedy eval on fresh eval-split prompts graded by the task's
project utility (`exact_answer` for `running_sum`, `item_accuracy` for `lookups`; `experiment.task` chooses). Each arm is reported as the *paired* difference against the base student on the same
prompts (tiny-lab notes: far more sensitive than two separate binomial errors).

Experiments (paper-notes.md):
- main recipe (Section 4): chosen = rung k, rejected = rung k-1, both below the student; dpo_norm and dpo; SFT on
  the chosen side; reversed; zero delta (two samples of the same rung); plus the plateau check: SFT on *correct*
  solutions, which should barely lift a student trained to its plateau.
- self-over-weaker (Experiment 2): chosen = the student's own greedy answer, rejected = a weaker rung; SFT on own
  answers; reversed.
- sweep (Section 5 "Analysis"): every chosen > rejected pair of rungs; gain against delta (mean utility of chosen
  minus rejected) with a fitted rise-then-plateau trend; and the chosen-quality curves: SFT on each rung and DPO on
  each rung over the weakest rung, against the chosen responses' accuracy, with the student's level marked.

Settings are fixed in the recipe before any eval number is looked at (Issue 7, "Honesty"): the DPO settings come
from the tiny-lab feasibility notes (lr 3e-6 constant, batch 32, beta 0.1 / dpo_norm 5, ~1 epoch of 2,000 pairs,
temperature-1 teacher samples); the ladder is chosen on the dev split; the eval split is used only for reporting.
Jobs (generation, train+eval of one arm) run in two single-thread processes at once (2-core machine).
"""

from __future__ import annotations

import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from deltalearn.io import iter_jsonl, read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from deltalearn.lab import task
from deltalearn.lab.ladder import LadderConfig, build_ladder
from deltalearn.lab.report import eval_metric, load_gen
from deltalearn.recipe import ConfigError, Recipe, TrainConfig, from_dict, resolve_train, to_dict
from deltalearn.stats import mean_se, paired_diff

BASE = "base"
"""Eval label of the untuned student (the report module's base label)."""


@dataclass
class LabSettings:
    """The `experiment:` section of a lab recipe."""

    ladder: LadderConfig
    task: str = task.NAME
    """The lab task (`running_sum`: the documented counterexample; `lookups`: many independent items per
    response, graded by the fraction right). It also keys the ladder (`ladder.task`)."""
    pref_prompts: int = 2000
    """Preference-tuning prompts (pref split); one pair per prompt."""
    eval_prompts: int = 3000
    """Fresh eval-split prompts for every reported accuracy."""
    teacher_temperature: float = 1.0
    """Teachers sample at temperature 1 (notes: greedy teacher outputs gave a smaller gain)."""
    max_new_tokens: int = 64
    """Token cap of every lab generation (teachers, student, evals); an answer that hits it counts as truncated."""
    gen_batch_size: int = 256
    """Prompts per generation batch in each worker (lab models are tiny, so large batches are cheap)."""
    main_chosen: str = "r4"
    """The main recipe's chosen rung (`rN`, a higher rung than main_rejected)."""
    main_rejected: str = "r3"
    """The main recipe's rejected rung (`rN`)."""
    self_weaker: str = "r3"
    """Self-over-weaker: the rung whose samples are rejected against the student's own answers."""
    workers: int = 2
    """Worker processes (one thread each) for generation, training and eval jobs; 1 runs them in this process."""
    drop_truncated: bool = True
    """Drop pairs where either side hit max_new_tokens (as PairConfig.drop_truncated)."""
    lr_grid: list[float] = field(default_factory=list)
    """When set, the lr of every arm is chosen on the *dev* split first: the main dpo_norm arm is trained at each
    lr and the one with the best paired dev gain is used (ties: the smaller lr); with pairs_on_dev, the
    self-over-weaker arms get their own lr, chosen the same way on their own pair. Empty: train.lr as given."""
    dev_prompts: int = 1000
    """Dev-split prompts on which lr_grid chooses the lr (never the eval prompts)."""
    sweep_lr: Optional[float] = None
    """One lr for all 28 arms of the lab's sweep (a simplification: the paper's authors tuned lr in {5e-8, 7e-8, 1e-7}
    and beta in {5, 10} per pair, see docs/reference-settings.md); when set, `--sweep` uses it instead of lr_grid."""
    pairs_on_dev: bool = False
    """Choose the main pair and self-over-weaker's rejected rung on the dev split instead of taking main_chosen,
    main_rejected and self_weaker as given: every rung pair whose chosen rung is below the student (ladder dev
    accuracy) and whose samples, SFT'd alone, do not raise the student (weak data), and the student's own answers
    over every rung below it, dpo_norm at sweep_lr (else train.lr), each scored by its paired dev gain; the largest
    wins (`choose_dev_pairs`). lr_grid then chooses each experiment's lr on dev for its winner."""
    corrupt: dict = field(default_factory=dict)
    """`deltalearn lab --corrupt` settings (m, lr_grid, natural, student_samples: `lab.corrupt.CorruptSettings`)."""

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "LabSettings":
        d = dict(recipe.experiment)
        if "ladder" not in d:
            raise ConfigError("experiment.ladder is required for kind: lab")
        ladder = LadderConfig.from_dict(d.pop("ladder"))
        s = from_dict(cls, {**d, "ladder": ladder}, "experiment")  # unknown keys and wrong types name the key
        task.get_task(s.task)
        ladder.task = s.task
        rungs = [f"r{i + 1}" for i in range(len(ladder.targets))]
        for key in () if s.pairs_on_dev else ("main_chosen", "main_rejected", "self_weaker"):  # else chosen on dev
            if getattr(s, key) not in rungs:
                raise ConfigError(f"experiment.{key}: {getattr(s, key)!r} is not a rung ({', '.join(rungs)})")
        if not s.pairs_on_dev and rungs.index(s.main_chosen) <= rungs.index(s.main_rejected):
            raise ConfigError("experiment.main_chosen must be a higher rung than main_rejected")
        return s

    def model(self, rung: str) -> str:
        """The `lab:` name of a rung of this ladder."""
        return f"lab:{self.ladder.name + '/' if self.ladder.name else ''}{rung}"


# ---------------------------------------------------------------------------------------------------------
# Jobs: each runs in a worker process with one thread
# ---------------------------------------------------------------------------------------------------------


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def gen_job(model: str, prompts_path: str, out_path: str, temperature: float, seed: int, max_new_tokens: int,
            batch_size: int, task_name: str = task.NAME) -> dict:
    """Generate one response per prompt (resumable file), and grade it."""
    from deltalearn.generate import generate_responses

    t0 = time.time()
    rows = generate_responses(model, read_jsonl(prompts_path), out_path, max_new_tokens=max_new_tokens,
                              temperature=temperature, seed=seed, batch_size=batch_size, precision="fp32",
                              progress=False)
    grade = task.get_task(task_name).grade
    scores = [grade(r["response"], r["reference"]) for r in rows]
    m, se = mean_se(scores)
    return {"model": model, "out": out_path, "accuracy": m, "se": se, "n": len(rows), "wall_s": time.time() - t0,
            "truncated": sum(r["truncated"] for r in rows)}


def evaluate(model: str, eval_path: str, out_json: str, *, max_new_tokens: int = 64, batch_size: int = 256,
             utility: str = "exact_answer") -> dict:
    """Greedy accuracy (the task's utility: exact answer, or fraction of items right) on the eval prompts through the project's evaluator
    (`deltalearn.evaluate.evaluate_model`), which writes eval/<label>.json with per-prompt scores (the paired
    differences are computed from these files). A finished eval is not redone."""
    from deltalearn.evaluate import evaluate_model
    from deltalearn.recipe import EvalConfig, PromptsConfig

    out = Path(out_json)
    if out.exists():
        return read_json(out)
    cfg = EvalConfig(prompts=PromptsConfig(path=eval_path, id_column="id"), utilities=[utility],
                     max_new_tokens=max_new_tokens, batch_size=batch_size)
    return evaluate_model(model, cfg, out.parent.parent, label=out.stem, precision="fp32", progress=False)


def eval_scores(path: str | Path) -> dict[str, float]:
    """Per-prompt utility scores of one eval result, by prompt id."""
    res = read_json(path)
    key = next(k for k in res["items"]["scores"] if k.startswith("utility/"))
    return dict(zip(res["items"]["ids"][key], res["items"]["scores"][key]))


def arm_job(name: str, cfg: dict, pairs_path: str, arm_dir: str, eval_path: str, eval_json: str,
            max_new_tokens: int, batch_size: int, utility: str = "exact_answer") -> dict:
    """Train one arm on its pairs, then evaluate the tuned model."""
    from deltalearn.train import train

    t0 = time.time()
    summary = train(from_dict(TrainConfig, cfg), read_jsonl(pairs_path), arm_dir, progress=False)
    res = evaluate(summary["model_dir"], eval_path, eval_json, max_new_tokens=max_new_tokens, batch_size=batch_size,
                   utility=utility)
    return {"arm": name, "train": {k: summary.get(k) for k in ("steps", "pairs", "final_loss", "train_s", "wall_s")},
            "accuracy": eval_metric(res)["mean"], "wall_s": time.time() - t0}


def run_jobs(jobs: list[tuple], workers: int, desc: str, progress: bool = True) -> list:
    """Run (fn, kwargs) jobs in `workers` single-thread processes; results in job order, with one progress bar."""
    from tqdm.auto import tqdm

    if not jobs:
        return []
    bar = tqdm(total=len(jobs), desc=desc, unit="job", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    results: list = [None] * len(jobs)
    if workers <= 1:
        _init_worker()
        for i, (fn, kw) in enumerate(jobs):
            results[i] = fn(**kw)
            bar.update(1)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker) as ex:
            futs = {ex.submit(fn, **kw): i for i, (fn, kw) in enumerate(jobs)}
            for f in as_completed(futs):
                results[futs[f]] = f.result()
                r = results[futs[f]]
                bar.set_postfix_str(str(r.get("arm") or r.get("model") or "")[-40:])
                bar.update(1)
    bar.close()
    return results


# ---------------------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------------------


def make_pair_rows(chosen: dict[str, dict], rejected: dict[str, dict], *, chosen_model: str, rejected_model: str,
                   rule: str, reverse: bool = False, drop_truncated: bool = True,
                   task_name: str = task.NAME) -> tuple[list[dict], dict]:
    """Pairs joining two generation sets on prompt id, through the project's pairing (`pairs.make_pairs`, rule
    `columns`, control `reverse`), so the lab's pairs pass the same filters as any recipe's: missing, empty,
    truncated (cutting one side changes the delta) and identical responses are dropped and counted. (Identical
    pairs carry no gradient in DPO; here they are the both-correct pairs, since a correct worked solution is unique.)
    Each row is graded with the task's grade; the stats hold the delta (mean chosen minus rejected)."""
    from deltalearn.pairs import make_pairs
    from deltalearn.recipe import PairConfig

    cfg = PairConfig(rule="columns", chosen=chosen_model, rejected=rejected_model,
                     control="reverse" if reverse else "none", drop_truncated=drop_truncated)
    rows, summary = make_pairs({chosen_model: list(chosen.values()), rejected_model: list(rejected.values())}, cfg)
    grade = task.get_task(task_name).grade
    for r in rows:
        ref = r["reference"]
        r["chosen_score"] = grade(r["chosen"][-1]["content"], ref)
        r["rejected_score"] = grade(r["rejected"][-1]["content"], ref)
        r["rule"] = rule
    if not rows:
        return rows, {"pairs": 0, "dropped": summary["dropped"], "delta": 0.0, "delta_se": 0.0,
                      "chosen_acc": 0.0, "rejected_acc": 0.0}
    delta, delta_se = paired_diff([r["rejected_score"] for r in rows], [r["chosen_score"] for r in rows])
    cm, _ = mean_se([r["chosen_score"] for r in rows])
    rm, _ = mean_se([r["rejected_score"] for r in rows])
    return rows, {"pairs": len(rows), "dropped": summary["dropped"], "delta": delta, "delta_se": delta_se,
                  "chosen_acc": cm, "rejected_acc": rm}


def sft_chosen_rows(chosen: dict[str, dict], *, model: str, rule: str, drop_truncated: bool = True,
                    task_name: str = task.NAME) -> tuple[list[dict], dict]:
    """SFT rows: every (untruncated) response of one generation set as the chosen side, nothing filtered by
    correctness (SFT on weak data is the paper's contrast)."""
    grade = task.get_task(task_name).grade
    rows = [{"id": g["id"], "prompt": [{"role": "user", "content": g["prompt"]}],
             "chosen": [{"role": "assistant", "content": g["response"]}], "chosen_model": model, "rule": rule,
             "chosen_score": grade(g["response"], g["reference"])}
            for g in chosen.values() if g["response"].strip() and not (drop_truncated and g["truncated"])]
    m, se = mean_se([r["chosen_score"] for r in rows])
    return rows, {"pairs": len(rows), "dropped_truncated_or_empty": len(chosen) - len(rows), "chosen_acc": m,
                  "chosen_acc_se": se}


def sft_rows(problems_path: str, task_name: str = task.NAME) -> list[dict]:
    """Correct solutions for the pref prompts: the plateau check's SFT data."""
    T = task.get_task(task_name)
    rows = []
    for p in read_jsonl(problems_path):
        prob = T.parse_prompt(p["prompt"])
        rows.append({"id": p["id"], "prompt": [{"role": "user", "content": prob.prompt}],
                     "chosen": [{"role": "assistant", "content": prob.solution}], "rule": "gold",
                     "chosen_score": 1.0})
    return rows


# ---------------------------------------------------------------------------------------------------------
# The experiment driver
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ArmSpec:
    name: str
    group: str
    """Which table: main / plateau / self / sweep / sft-curve."""
    chosen: str
    rejected: str | None
    loss: str
    reverse: bool = False
    note: str = ""


def _gen_key(model: str, temperature: float, seed: int) -> str:
    from deltalearn.generate import model_slug

    return f"{model_slug(model)}-t{temperature:g}-s{seed}"


class Lab:
    """One lab run directory: prompts, generations, pairs, arms, eval, results.json."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, *, progress: bool = True):
        self.recipe = recipe
        self.s = LabSettings.from_recipe(recipe)
        self.T = task.get_task(self.s.task)
        self.dir = Path(run_dir)
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.ladder: dict = {}
        self.selection: dict | None = None
        self.pair_selection: dict | None = None
        self.self_selection: dict | None = None

    # -- stages -------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        t0 = time.time()
        self.ladder = build_ladder(self.s.ladder, progress=self.progress)
        self.timings["ladder_s"] = 0.0 if self.ladder.get("cached") else time.time() - t0
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, split, n in (("prompts", "pref", self.s.pref_prompts), ("eval_prompts", "eval", self.s.eval_prompts),
                               ("dev_prompts", "dev", self.s.dev_prompts)):
            path = self.dir / f"{name}.jsonl"
            if not path.exists():
                write_jsonl_atomic(path, self.T.prompt_rows(self.T.sample_problems(split, n, seed=self.recipe.seed)))

    def generate(self, needs: list[tuple[str, float, int]], extra: list[tuple] = ()) -> dict[str, dict]:
        """Generations of (rung, temperature, seed) on the pref prompts (and `extra` jobs in the same pool);
        returns key -> job result."""
        t0 = time.time()
        jobs = []
        members = [(m, temp, seed) for rung, temp, seed in needs for m in self.members(rung)]
        for rung, temp, seed in members:
            model = self.s.model(rung)
            out = self.dir / "generations" / f"{_gen_key(model, temp, seed)}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((gen_job, dict(model=model, prompts_path=str(self.dir / "prompts.jsonl"), out_path=str(out),
                                       temperature=temp, seed=seed, max_new_tokens=self.s.max_new_tokens,
                                       batch_size=self.s.gen_batch_size, task_name=self.s.task)))
        res = run_jobs(jobs + list(extra), self.s.workers, "lab: generate", self.progress)
        self.timings["generate_s"] = self.timings.get("generate_s", 0) + time.time() - t0
        return {f"{rung}-t{temp:g}-s{seed}": r for (rung, temp, seed), r in zip(members, res)}

    def members(self, rung: str) -> list[str]:
        """The models behind a rung: itself, or its seeded copies (ladder.teacher_pool > 1)."""
        return self.ladder.get("pool", {}).get(rung, [rung])

    def gen_path(self, rung: str, temp: float, seed: int) -> Path:
        return self.dir / "generations" / f"{_gen_key(self.s.model(rung), temp, seed)}.jsonl"

    def cached_pairs(self, arm: ArmSpec) -> tuple[Path, dict | None]:
        """The arm's pairs file, with its stats when it was built already (checked to be this arm's pairs)."""
        path = self.dir / "pairs" / f"{arm.name}.jsonl"
        stats_path = path.with_suffix(".stats.json")
        if path.exists() and stats_path.exists():
            _check_cached_pairs(path, arm)
            return path, read_json(stats_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, None

    def build_pairs(self, arm: ArmSpec) -> tuple[Path, dict]:
        path, stats = self.cached_pairs(arm)
        if stats is not None:
            return path, stats
        if arm.chosen == "gold":
            rows = sft_rows(str(self.dir / "prompts.jsonl"), self.s.task)
            stats = {"pairs": len(rows), "chosen_acc": 1.0}
        elif arm.rejected is None:
            rows, stats = sft_chosen_rows(self.responses(arm.chosen), model=arm.chosen, rule=arm.group,
                                          drop_truncated=self.s.drop_truncated, task_name=self.s.task)
        else:
            rows, stats = make_pair_rows(self.responses(arm.chosen), self.responses(arm.rejected, side=1),
                                         chosen_model=arm.chosen, rejected_model=arm.rejected,
                                         rule=arm.group, reverse=arm.reverse,
                                         drop_truncated=self.s.drop_truncated, task_name=self.s.task)
        write_jsonl_atomic(path, rows)
        write_json_atomic(path.with_suffix(".stats.json"), stats)
        return path, stats

    def responses(self, spec: str, side: int = 0) -> dict[str, dict]:
        """One response per pref prompt, by id: 'r4' = rung r4's teacher sample (seed 0); 'r4#1' = its second
        sample; 'student' = the student's greedy answer (self-over-weaker's chosen side, Experiment 2).
        A pooled rung (K seeded copies) answers prompt i from copy (i + side) mod K: the chosen side (side 0) and
        the rejected side (side 1) of a pair never come from the same run, and each side's per-key errors are an
        average over K runs'."""
        if spec == "student":
            return load_gen(self.gen_path("student", 0.0, 0))
        rung, _, seed = spec.partition("#")
        members = [load_gen(self.gen_path(m, self.s.teacher_temperature, int(seed or 0))) for m in self.members(rung)]
        if len(members) == 1:
            return members[0]
        ids = [p["id"] for p in read_jsonl(self.dir / "prompts.jsonl")]
        return {pid: members[(i + side) % len(members)][pid] for i, pid in enumerate(ids)
                if pid in members[(i + side) % len(members)]}

    def train_cfg(self, loss: str, lr: float | None = None) -> dict:
        base = to_dict(self.recipe.train)
        base.update(model=self.s.model("student"), loss=loss, beta=None if loss != self.recipe.train.loss
                    else self.recipe.train.beta)
        if lr is not None:
            base["lr"] = lr
        cfg = resolve_train(from_dict(TrainConfig, base))
        return to_dict(cfg)

    def run_arms(self, arms: list[ArmSpec], desc: str, *, where: Path | None = None, eval_prompts: str = "eval",
                 lrs: list[float | None] | None = None, extra: list[tuple] = ()) -> dict[str, dict]:
        """Train + evaluate arms (in `where`, default the run folder) on `eval_prompts` ('eval' or 'dev')."""
        t0 = time.time()
        where = where or self.dir
        jobs, info = [], {}
        for arm, lr in zip(arms, lrs or [None] * len(arms)):
            pairs_path, stats = self.build_pairs(arm)
            info[arm.name] = {"spec": asdict(arm), "pairs": stats}
            jobs.append((arm_job, dict(name=arm.name, cfg=self.train_cfg(arm.loss, lr), pairs_path=str(pairs_path),
                                       arm_dir=str(where / "arms" / arm.name),
                                       eval_path=str(self.dir / f"{eval_prompts}_prompts.jsonl"),
                                       eval_json=str(where / "eval" / f"{arm.name}.json"),
                                       max_new_tokens=self.s.max_new_tokens, batch_size=self.s.gen_batch_size,
                                       utility=self.T.UTILITY)))
        results = run_jobs(list(extra) + jobs, self.s.workers, desc, self.progress)[len(extra):]
        for arm, r in zip(arms, results):
            info[arm.name]["result"] = r
        self.timings[desc.replace("lab: ", "").replace(" ", "_") + "_s"] = time.time() - t0
        return info

    def select_lr(self, chosen: str | None = None, rejected: str | None = None, *,
                  file: str = "selection.json") -> dict:
        """Choose the lr on the dev split (Issue 7, "Honesty"): a dpo_norm arm (default the main pair) at each lr
        of the grid, its paired dev gain over the base student; the best wins (ties: the smaller lr). Cached in
        dev/<file>."""
        out = self.dir / "dev" / file
        chosen, rejected = chosen or self.s.main_chosen, rejected or self.s.main_rejected
        who = "own" if chosen == "student" else chosen
        grid = sorted(self.s.lr_grid)
        fingerprint = {**self.dev_fingerprint(), "lr_grid": grid}
        if out.exists():
            return _cached_choice(out, fingerprint, arm=f"dpo_norm {who} > {rejected}")
        prefix = "" if chosen == self.s.main_chosen and rejected == self.s.main_rejected else f"{chosen}-over-{rejected}-"
        arms = [ArmSpec(f"{prefix}lr{lr:g}", "dev", chosen, rejected, "dpo_norm") for lr in grid]
        self.run_arms(arms, "lab: lr on dev", where=self.dir / "dev", eval_prompts="dev", lrs=grid,
                      extra=[self.base_eval_job("dev")])
        rows = []
        for arm, lr in zip(arms, grid):
            g, se, fixed, broken = self.gain(arm.name, where=self.dir / "dev")
            rows.append({"lr": lr, "dev_gain": g, "se": se, "fixed": fixed, "broken": broken})
        best = max(rows, key=lambda r: (r["dev_gain"], -r["lr"]))
        res = {"arm": f"dpo_norm {who} > {rejected}", "grid": rows, "lr": best["lr"], "dev_prompts": self.s.dev_prompts,
               "settings": fingerprint}
        write_json_atomic(out, res)
        return res

    def select_pairs(self) -> dict:
        """Choose the main pair and the self-over-weaker rung on the dev split (`pairs_on_dev`), never on the eval
        prompts. Cached in dev/pairs.json; sets main_chosen, main_rejected and self_weaker."""
        out = self.dir / "dev" / "pairs.json"
        if out.exists():
            res = _cached_choice(out, {**self.dev_fingerprint(), "lr": self.pairs_lr()})
        else:
            res = self._select_pairs()
            write_json_atomic(out, res)
        self.s.main_chosen, self.s.main_rejected = res["main"]["chosen"], res["main"]["rejected"]
        self.s.self_weaker = res["self"]["rejected"]
        return res

    def _select_pairs(self) -> dict:
        """Train and score every candidate of `dev_pair_candidates` on dev at one lr (sweep_lr, else train.lr),
        then apply `choose_dev_pairs`."""
        s = self.s
        student_acc = self.ladder["student"]["dev_acc"]
        below = [r["name"] for r in self.ladder["rungs"] if r["dev_acc"] < student_acc]
        if len(below) < 2:
            raise ConfigError(f"experiment.pairs_on_dev: {len(below)} rung(s) below the student's dev accuracy "
                              f"{student_acc:.1%} ({self.s.ladder.name or 'lab'} ladder); a pair needs two")
        self.generate([(r, s.teacher_temperature, 0) for r in below] + [("student", 0.0, 0)])
        arms = dev_pair_candidates(below)
        lr = self.pairs_lr()
        self.run_arms(arms, "lab: pairs on dev", where=self.dir / "dev", eval_prompts="dev", lrs=[lr] * len(arms),
                      extra=[self.base_eval_job("dev")])
        rows = []
        for arm in arms:
            g, se, fixed, broken = self.gain(arm.name, where=self.dir / "dev")
            rows.append({"arm": arm.name, "loss": arm.loss, "chosen": arm.chosen, "rejected": arm.rejected,
                         "dev_gain": g, "se": se, "fixed": fixed, "broken": broken})
        picked = choose_dev_pairs(rows)
        return {"lr": lr, "dev_prompts": s.dev_prompts, "student_dev_acc": student_acc, "candidates": rows, **picked,
                "settings": {**self.dev_fingerprint(), "lr": lr}}

    def pairs_lr(self) -> float:
        return self.s.sweep_lr if self.s.sweep_lr is not None else self.recipe.train.lr

    def dev_fingerprint(self) -> dict:
        """What a dev choice depends on besides its own grid: a cached choice made under other values is refused."""
        t = self.recipe.train
        return {"ladder": self.ladder.get("config_hash"), "seed": self.recipe.seed, "pref_prompts": self.s.pref_prompts,
                "dev_prompts": self.s.dev_prompts, "teacher_temperature": self.s.teacher_temperature,
                "train": {"loss_beta": t.beta, "batch_size": t.batch_size, "max_steps": t.max_steps, "epochs": t.epochs}}

    def arm_lrs(self, arms: list[ArmSpec]) -> list[float | None]:
        """Each arm's lr: the self-over-weaker arms' own dev choice when there is one, else the recipe's."""
        own = self.self_selection["lr"] if self.self_selection else None
        return [own if a.group == "self" else None for a in arms]

    def base_eval_job(self, split: str = "eval") -> tuple:
        """The base student's eval on the `eval` (report) or `dev` (selection) prompts; every arm of that split is
        paired against it, and a finished one is not redone."""
        where = self.dir if split == "eval" else self.dir / "dev"
        return (evaluate, dict(model=self.s.model("student"), eval_path=str(self.dir / f"{split}_prompts.jsonl"),
                               out_json=str(where / "eval" / f"{BASE}.json"),
                               max_new_tokens=self.s.max_new_tokens, batch_size=self.s.gen_batch_size,
                               utility=self.T.UTILITY))

    def gain(self, arm: str, where: Path | None = None) -> tuple[float, float, int, int]:
        """Paired difference of an arm against the base student on the eval prompts: (diff, se, fixed, broken)."""
        where = where or self.dir
        base = eval_scores(where / "eval" / f"{BASE}.json")
        new = eval_scores(where / "eval" / f"{arm}.json")
        ids = sorted(base)
        b, n = [base[i] for i in ids], [new[i] for i in ids]
        d, se = paired_diff(b, n)
        fixed = sum(1 for x, y in zip(b, n) if y > x)
        broken = sum(1 for x, y in zip(b, n) if y < x)
        return d, se, fixed, broken


def _cached_choice(path: Path, fingerprint: dict, arm: str | None = None) -> dict:
    """A dev choice cached in a run folder, if it was made for this arm under these settings; else an error that
    names what differs (a silent reuse would report another run's choice). Files from before fingerprints were
    written are checked by their arm alone."""
    res = read_json(path)
    diffs = [] if arm is None or res.get("arm") == arm else [f"arm: {res.get('arm')!r} vs {arm!r}"]
    saved = res.get("settings")
    if saved is not None:
        diffs += [f"{k}: {saved.get(k)!r} vs {v!r}" for k, v in fingerprint.items() if saved.get(k) != v]
    if diffs:
        raise ConfigError(f"{path} was chosen under other settings ({'; '.join(diffs)}; folder vs this run); use "
                          "another --out or delete that file")
    return res


def _check_cached_pairs(path: Path, arm: "ArmSpec") -> None:
    """A pairs file cached under an arm's name must hold that arm's sides (rerunning a folder with another main
    pair would otherwise train and report the old pairs under the new title)."""
    if arm.chosen == "gold":
        return
    first = next(iter_jsonl(path), (0, None))[1]  # the first row only: the file may hold thousands
    want = (arm.rejected, arm.chosen) if arm.reverse else (arm.chosen, arm.rejected)
    if first is not None and (first.get("chosen_model"), first.get("rejected_model")) != want:
        raise ConfigError(f"{path} holds pairs {first.get('chosen_model')} > {first.get('rejected_model')}, but arm "
                          f"{arm.name} is {want[0]} > {want[1]} in this run; use another --out or delete the run "
                          "folder's pairs/, arms/ and eval/")


# ---------------------------------------------------------------------------------------------------------
# Arms of each experiment
# ---------------------------------------------------------------------------------------------------------


def main_arms(s: LabSettings) -> list[ArmSpec]:
    k, j = s.main_chosen, s.main_rejected
    return [
        ArmSpec("main-dpo_norm", "main", k, j, "dpo_norm", note=f"{k} > {j}"),
        ArmSpec("main-dpo", "main", k, j, "dpo", note=f"{k} > {j}"),
        ArmSpec("main-sft-chosen", "main", k, None, "sft", note=f"SFT on {k}"),
        ArmSpec("main-reversed", "main", k, j, "dpo_norm", reverse=True, note=f"{j} > {k}"),
        ArmSpec("main-zero-delta", "main", k, k + "#1", "dpo_norm", note=f"{k} vs {k} (two samples)"),
        ArmSpec("plateau-sft-gold", "plateau", "gold", None, "sft", note="SFT on correct solutions"),
    ]


def self_arms(s: LabSettings) -> list[ArmSpec]:
    w = s.self_weaker
    return [
        ArmSpec("self-dpo_norm", "self", "student", w, "dpo_norm", note=f"own > {w}"),
        ArmSpec("self-sft", "self", "student", None, "sft", note="SFT on own answers"),
        ArmSpec("self-reversed", "self", "student", w, "dpo_norm", reverse=True, note=f"{w} > own"),
    ]


def dev_pair_candidates(below: list[str]) -> list[ArmSpec]:
    """`pairs_on_dev`'s dev arms from the rungs below the student (lowest first): SFT on each rung (is it weak
    data?), every higher-over-lower rung pair, then the student's own answers over each rung (dpo_norm)."""
    arms = [ArmSpec(f"sft-{c}", "dev", c, None, "sft") for c in below]
    arms += [ArmSpec(f"pair-{c}-over-{r}", "dev", c, r, "dpo_norm") for ci, c in enumerate(below) for r in below[:ci]]
    return arms + [ArmSpec(f"self-over-{r}", "dev", "student", r, "dpo_norm") for r in below]


def choose_dev_pairs(rows: list[dict]) -> dict:
    """The claims' conditions, checked on dev scores of `dev_pair_candidates` (rows: arm, loss, chosen, rejected,
    dev_gain). Main pair: the largest dev gain among rung pairs whose chosen rung is weak data in the paper's sense
    -- SFT on its samples alone does not raise the student; self-over-weaker: the largest among own > rung. Ties:
    the first row (the lowest rungs)."""
    sft_gain = {r["chosen"]: r["dev_gain"] for r in rows if r["loss"] == "sft"}
    weak = [r for r in rows if r["loss"] != "sft" and r["chosen"] != "student" and sft_gain[r["chosen"]] <= 0]
    if not weak:
        raise ConfigError("experiment.pairs_on_dev: SFT on every rung below the student raises it on dev ("
                          + ", ".join(f"{k} {v * 100:+.2f}" for k, v in sft_gain.items())
                          + " pts), so no pair has a weak chosen side in the paper's sense")
    own = [r for r in rows if r["chosen"] == "student"]
    return {"weak_chosen": sorted({r["chosen"] for r in weak}, key=lambda c: list(sft_gain).index(c)),
            "main": max(weak, key=lambda r: r["dev_gain"]), "self": max(own, key=lambda r: r["dev_gain"])}


def sweep_arms(s: LabSettings) -> list[ArmSpec]:
    rungs = [f"r{i + 1}" for i in range(len(s.ladder.targets))]
    arms = [ArmSpec(f"sweep-{c}-over-{r}", "sweep", c, r, "dpo_norm", note=f"{c} > {r}")
            for ci, c in enumerate(rungs) for r in rungs[:ci]]
    arms += [ArmSpec(f"sft-{c}", "sft-curve", c, None, "sft", note=f"SFT on {c}") for c in rungs]
    return arms


def run_lab(recipe: Recipe, run_dir: str | Path, *, sweep: bool = False, progress: bool = True) -> dict:
    """`deltalearn lab`: ladder, then the main recipe with its controls and self-over-weaker; with `sweep`, the
    21-pair sweep and the chosen-quality curves instead. Writes results.json + plots; returns the results."""
    from deltalearn.lab import report

    from deltalearn.outputs import claim

    t0 = time.time()
    lab = Lab(recipe, claim(run_dir, "run"), progress=progress)
    lab.prepare()
    s = lab.s
    rungs = [f"r{i + 1}" for i in range(len(s.ladder.targets))]
    if sweep:
        arms = sweep_arms(s)
        needs = [(r, s.teacher_temperature, 0) for r in rungs] + [("student", 0.0, 0)]
    else:
        if s.pairs_on_dev:
            lab.pair_selection = lab.select_pairs()
        arms = main_arms(s) + self_arms(s)
        needs = sorted({(s.main_chosen, s.teacher_temperature, 0), (s.main_chosen, s.teacher_temperature, 1),
                        (s.main_rejected, s.teacher_temperature, 0), (s.self_weaker, s.teacher_temperature, 0),
                        ("student", 0.0, 0)})
    load_start = os.getloadavg()
    gens = lab.generate(needs, extra=[lab.base_eval_job()])
    if sweep and s.sweep_lr is not None:
        lab.recipe.train.lr = s.sweep_lr
    elif s.lr_grid:
        lab.selection = lab.select_lr()
        lab.recipe.train.lr = lab.selection["lr"]
        if s.pairs_on_dev:  # self-over-weaker is its own experiment: its lr is chosen on dev for its own pair
            lab.self_selection = lab.select_lr("student", s.self_weaker, file="selection-self.json")
    info = lab.run_arms(arms, "lab: arms", lrs=lab.arm_lrs(arms))
    lab.timings["total_s"] = time.time() - t0
    results = report.lab_results(lab, arms, info, gens, sweep=sweep)
    results["load_average"] = {"start": [round(x, 2) for x in load_start],
                               "end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    write_json_atomic(lab.dir / "results.json", results)
    from deltalearn.manifest import update_manifest
    from deltalearn.models import lab_home
    from deltalearn.recipe import to_dict

    update_manifest(lab.dir, recipe=to_dict(lab.recipe), stage="lab-sweep" if sweep else "lab",
                    seconds=round(lab.timings["total_s"], 2), ladder=str(lab_home() / s.ladder.name / "ladder.json"))
    return results


def render_lab(recipe: Recipe, run_dir: str | Path, *, sweep: bool = False) -> dict:
    """Rewrite results.json and the plots of a finished lab run from its files alone (no training, no
    generation); the timings and load averages of the run that produced them are kept."""
    from deltalearn.lab import report

    lab = Lab(recipe, run_dir, progress=False)
    old = read_json(lab.dir / "results.json")
    lab.ladder = build_ladder(lab.s.ladder, progress=False)
    lab.timings = dict(old.get("timings_s", {}))
    if lab.s.pairs_on_dev and not sweep and (lab.dir / "dev" / "pairs.json").exists():
        lab.pair_selection = lab.select_pairs()
    sel = lab.dir / "dev" / "selection.json"
    if sel.exists() and not (sweep and lab.s.sweep_lr is not None):
        lab.selection = read_json(sel)
        lab.recipe.train.lr = lab.selection["lr"]
    elif sweep and lab.s.sweep_lr is not None:
        lab.recipe.train.lr = lab.s.sweep_lr
    if not sweep and (lab.dir / "dev" / "selection-self.json").exists():
        lab.self_selection = read_json(lab.dir / "dev" / "selection-self.json")
    arms = sweep_arms(lab.s) if sweep else main_arms(lab.s) + self_arms(lab.s)
    info = {a.name: {"spec": asdict(a), "pairs": read_json(lab.dir / "pairs" / f"{a.name}.stats.json")} for a in arms}
    results = report.lab_results(lab, arms, info, {}, sweep=sweep)
    results["load_average"] = old.get("load_average")
    write_json_atomic(lab.dir / "results.json", results)
    return results


def run_lab_recipe(recipe: Recipe) -> dict:
    """`deltalearn run` on a `kind: lab` recipe: the main lab run into the recipe's run folder."""
    return run_lab(recipe, recipe.run_dir)
