"""A thin bridge to lm-evaluation-harness (optional extra: `pip install -e '.[eval]'` in a clone).

Standard benchmarks on any checkpoint deltalearn can load (hub ids, run folders, `smollm2-135m`, `lab:` rungs),
with every setting that changes a score recorded next to the score: lm-eval's version, task versions, shots, limit,
batch size, dtype (SimPO #44/#81 and trl #1420 are what unpinned eval settings cost people).

`preset:tulu3-dev` names the Tulu 3 development suite the paper reports (Section 4; evaluated there with OLMES).
Tasks lm-eval has run through it, each with its preset's shots; AlpacaEval 2 and PopQA are not lm-eval tasks and
are listed as external, with the setting the paper's numbers used, so a report never shows a blank as a zero
(`settings.benchmarks` says, for each of the 11, whether it ran). Chat models are prompted through their chat
template (few-shot examples as earlier turns), as the Tulu 3 / OLMES evaluations of chat models are; the settings
record it, with the first request each task sent. AlpacaEval 2 through the `alpaca_eval` package is not wired in.

Local tasks: `local:NAME` is a YAML task shipped in `deltalearn/data/lmeval/` (e.g. `local:tiny_facts`, used by the
tests); `include=DIR` adds a user's own YAML task folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

from deltalearn.recipe import ConfigError

LOCAL_TASK_DIR = Path(__file__).parent / "data" / "lmeval"

# The Tulu 3 development suite (Tulu 3 report, Table "development evaluation"; paper Section 4, 11 benchmarks).
# name -> (lm-eval task or None when lm-eval lacks it, shots, metric the paper reports, note)
TULU3_DEV: dict[str, tuple[Optional[str], int, str, str]] = {
    "MMLU": ("mmlu", 0, "acc", "Tulu 3 uses 0-shot CoT (OLMES); lm-eval's mmlu is 0-shot multiple choice"),
    "GSM8K": ("gsm8k_cot", 8, "exact_match,flexible-extract", "8-shot chain of thought"),
    "MATH": ("minerva_math", 4, "exact_match", "4-shot Minerva prompts; Tulu 3 reports flex exact match"),
    "IFEval": ("ifeval", 0, "prompt_level_loose_acc", "prompt-level loose accuracy"),
    "AlpacaEval 2": (None, 0, "length-controlled win rate", "external: the alpaca_eval package with a GPT-4 judge"),
    "BBH": ("bbh_cot_fewshot", 3, "exact_match", "3-shot chain of thought"),
    "DROP": ("drop", 3, "f1", "3-shot"),
    "PopQA": (None, 15, "exact_match", "external: not an lm-eval task (OLMES has it), 15-shot"),
    "TruthfulQA": ("truthfulqa_mc2", 6, "acc", "MC2; Tulu 3 uses 6-shot, lm-eval's default is 0-shot"),
    "HumanEval": ("humaneval", 0, "pass@1", "Tulu 3 reports pass@10 (sampled); needs HF_ALLOW_CODE_EVAL=1"),
    "HumanEval+": ("humaneval_plus", 0, "pass@1", "Tulu 3 reports pass@10 (sampled); needs HF_ALLOW_CODE_EVAL=1"),
}
PRESETS = {"tulu3-dev": TULU3_DEV}


def lm_eval_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("lm_eval")
    except Exception:  # noqa: BLE001 - not installed
        return None


def expand_tasks(tasks: list[str]) -> tuple[list[str], list[dict]]:
    """`preset:NAME` -> lm-eval task names; returns (tasks to run, external benchmarks recorded but not run)."""
    run, external = [], []
    for t in tasks:
        if t.startswith("preset:"):
            name = t.split(":", 1)[1]
            if name not in PRESETS:
                raise ConfigError(f"unknown lm-eval preset '{name}' (known: {', '.join(PRESETS)})")
            for bench, (task, shots, metric, note) in PRESETS[name].items():
                if task is None:
                    external.append({"benchmark": bench, "shots": shots, "metric": metric, "note": note})
                else:
                    run.append(task)
        else:
            run.append(t)
    return list(dict.fromkeys(run)), external


def preset_average(name: str, metrics: dict[str, dict]) -> Optional[dict]:
    """Unweighted mean of each benchmark's headline metric (the paper reports the suite average), with the
    standard error of a mean of independent estimates, sqrt(sum se^2) / k. Benchmarks not run are left out and
    listed, so an average over 9 of 11 is never mistaken for the paper's."""
    import math

    vals, ses, used, missing = [], [], [], []
    for bench, (task, _, metric, _) in PRESETS[name].items():
        key_prefix = f"lm_eval/{task}/{metric.split(',')[0]}" if task else None
        hits = [k for k in metrics if key_prefix and (k == key_prefix or k.startswith(key_prefix + "["))]
        if not hits:
            missing.append(bench)
            continue
        m = metrics[hits[0]]
        vals.append(m["mean"])
        ses.append(m["se"] if isinstance(m.get("se"), (int, float)) else float("nan"))
        used.append(bench)
    if not vals:
        return None
    k = len(vals)
    return {"mean": sum(vals) / k, "se": math.sqrt(sum(x * x for x in ses)) / k, "n": k,
            "benchmarks": used, "missing": missing}


def _materialize_local_tasks(tmp: Path) -> Path:
    """Copy the shipped YAML tasks into `tmp` with their data paths made absolute (lm-eval resolves relative
    `data_files` from the working directory, not from the YAML)."""
    for y in LOCAL_TASK_DIR.glob("*.yaml"):
        (tmp / y.name).write_text(y.read_text(encoding="utf-8").replace("__HERE__", str(LOCAL_TASK_DIR)))
    return tmp


def _quiet_git_hash() -> None:
    """lm-eval records `git describe` of the working directory with git's stderr left open, so outside a checkout
    every eval printed `fatal: not a git repository`. It records deltalearn's own revision instead, quietly."""
    import lm_eval.evaluator

    from deltalearn.manifest import git_revision

    lm_eval.evaluator.get_git_commit_hash = git_revision


def preset_shots(tasks: list[str]) -> dict[str, int]:
    """{lm-eval task: shots} of every preset task requested: each runs with its preset's shots (the paper's
    setting), not lm-eval's task default."""
    out = {}
    for t in tasks:
        if t.startswith("preset:") and t.split(":", 1)[1] in PRESETS:
            out.update({task: shots for task, shots, _, _ in PRESETS[t.split(":", 1)[1]].values() if task})
    return out


def benchmark_table(tasks: list[str], metrics: dict[str, dict]) -> dict[str, str]:
    """For each benchmark of a requested preset: 'ran' or why not, so a table never passes 9 of 11 as 11."""
    out = {}
    for t in tasks:
        name = t.split(":", 1)[1] if t.startswith("preset:") else None
        for bench, (task, shots, metric, note) in PRESETS.get(name, {}).items():
            if task is None:
                out[bench] = f"not run ({note})"
            elif any(k.startswith(f"lm_eval/{task}/") for k in metrics):
                out[bench] = f"ran: {task}, {shots}-shot, {metric}"
            else:
                out[bench] = f"not run (no result for {task})"
    return out


def _has_chat_template(path: str) -> bool:
    from deltalearn.models import load_tokenizer

    return bool(getattr(load_tokenizer(path), "chat_template", None))


def run_lm_eval(model: str, tasks: list[str], *, limit: Optional[int] = None, batch_size: int = 8,
                num_fewshot: Optional[int] = None, include: Optional[str] = None, device: Optional[str] = None,
                dtype: str = "auto", seed: int = 0, apply_chat_template: Optional[bool] = None) -> dict[str, Any]:
    """Run lm-eval tasks on `model` and return {"metrics": {task/metric: {mean, se, n}}, "settings": ...}.

    model: any name `deltalearn.models.local_folder` resolves (GGUF models are de-quantized once and cached).
    apply_chat_template: None = on when the model has a chat template (the paper's students are chat models, and
    the Tulu 3 / OLMES evaluations prompt them in chat format), with few-shot examples as earlier turns.
    num_fewshot: every task's shots; None = each preset task's own shots, else lm-eval's task default.
    The settings record, per task, the shots used and the first request's context (what the model saw).
    """
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("lm-eval tasks need the [eval] extra: pip install -e '.[eval]' in a clone") from None
    import torch

    from deltalearn.models import local_folder

    _quiet_git_hash()
    task_names, external = expand_tasks(tasks)
    task_names = [t.split(":", 1)[1] if t.startswith("local:") else t for t in task_names]
    # Local task names in the shipped YAMLs are prefixed so they never shadow an lm-eval task.
    local = {t for t in task_names if (LOCAL_TASK_DIR / f"{t}.yaml").exists()}
    task_names = [f"deltalearn_{t}" if t in local else t for t in task_names]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    path = local_folder(model)
    if apply_chat_template is None:
        apply_chat_template = _has_chat_template(path)
    shots = preset_shots(tasks)
    # lm-eval takes one num_fewshot per call: one call per shot count
    groups: dict[Optional[int], list[str]] = {}
    for t in task_names:
        groups.setdefault(num_fewshot if num_fewshot is not None else shots.get(t), []).append(t)
    results, versions, n_shot, configs, n_samples, seen = {}, {}, {}, {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="deltalearn-lmeval-") as tmp:
        includes = [str(_materialize_local_tasks(Path(tmp)))] + ([include] if include else [])
        # Indexing lm-eval's own ~10k task YAMLs takes tens of seconds: skip it when only local tasks run.
        tm = TaskManager(include_path=includes, include_defaults=not (len(local) == len(task_names) and not include))
        unknown = [t for t in task_names if t not in tm.all_tasks]
        if unknown:
            raise ConfigError(f"lm-eval does not know task(s) {unknown}; see `lm-eval ls tasks`, or pass a YAML "
                              "task folder with --lm-eval-include")
        for k, names in groups.items():
            out = lm_eval.simple_evaluate(
                model="hf", model_args=f"pretrained={path},dtype={dtype}", tasks=names, task_manager=tm,
                limit=limit, batch_size=batch_size, num_fewshot=k, device=device, log_samples=True,
                apply_chat_template=apply_chat_template, fewshot_as_multiturn=apply_chat_template and bool(k),
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                confirm_run_unsafe_code=any(t.startswith("humaneval") for t in names))
            results.update(out["results"])
            versions.update(out.get("versions", {}))
            n_shot.update(out.get("n-shot", {}))
            configs.update(out.get("configs", {}))
            n_samples.update(out.get("n-samples", {}))
            for task, samples in (out.get("samples") or {}).items():
                if samples:
                    args = samples[0].get("arguments")
                    first = args[0][0] if args and isinstance(args[0], (list, tuple)) else args
                    seen[task] = str(first)[:4000]
    metrics: dict[str, dict] = {}
    for task, res in results.items():
        n = (n_samples.get(task) or {}).get("effective")
        for key, value in res.items():
            if key in ("alias", "sample_len") or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            se = res.get(f"{metric}_stderr,{filt}")
            metrics[f"lm_eval/{task}/{metric}" + (f"[{filt}]" if filt and filt != "none" else "")] = {
                "mean": float(value), "se": float(se) if isinstance(se, (int, float)) else None, "n": n}
    for t in tasks:
        if t.startswith("preset:"):
            avg = preset_average(t.split(":", 1)[1], metrics)
            if avg:
                metrics[f"lm_eval/{t.split(':', 1)[1]}/average"] = avg
    return {
        "metrics": metrics,
        "settings": {"tasks": task_names, "requested": tasks, "external_not_run": external, "limit": limit,
                     "num_fewshot": num_fewshot, "batch_size": batch_size, "device": device, "dtype": dtype,
                     "seed": seed, "apply_chat_template": apply_chat_template,
                     "fewshot_as_multiturn": apply_chat_template, "model_path": path,
                     "lm_eval_version": lm_eval_version(), "benchmarks": benchmark_table(tasks, metrics),
                     "task_versions": versions, "n_shot": n_shot, "first_request": seen,
                     "configs": {t: {k: c.get(k) for k in ("num_fewshot", "output_type", "metric_list",
                                                           "generation_kwargs") if k in c}
                                 for t, c in configs.items()}},
    }
