"""The Python API: `import deltalearn as dl`, then dl.generate, dl.make_pairs, dl.train, dl.evaluate, dl.run.

Each function is the one the CLI subcommand calls, with the recipe's settings as keyword arguments (the fields
of `recipe.GenerateConfig`-like options, `PairConfig`, `TrainConfig`, `EvalConfig`; see `deltalearn.recipe`), and
writes the same artifacts, so a script and `deltalearn run` resume each other's work. Heavy modules (torch,
transformers) are imported only when a function is called.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional, Union

PathLike = Union[str, os.PathLike]


def _config(cls, settings: dict, where: str):
    """A recipe dataclass from keyword settings, naming an unknown key and the valid ones."""
    from deltalearn.recipe import ConfigError

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; valid: {', '.join(sorted(names))}")
    return cls(**settings)


def load_prompts(source: PathLike, *, split: Optional[str] = None, **kw) -> list[dict]:
    """Prompt rows {"id", "prompt", ...} from a file, a `save_to_disk` folder or `builtin:NAME` (see
    `deltalearn.prompts.load_prompts` for column, id_column, limit, dedupe).

    split: as `deltalearn generate --split`: which rows of a file with a `split` column (default "train", so the
    held-out "eval" rows stay out of what a script generates from and trains on; `dl.evaluate` takes "eval");
    a file without that column gives every row."""
    from deltalearn.prompts import load_prompts as _load

    kw.setdefault("default_split", "train")
    return _load(source, split=split, **kw)


def generate(model: str, prompts: Union[PathLike, list[dict]], out: Optional[PathLike] = None, *,
             shard: Optional[str] = None, **settings: Any) -> list[dict]:
    """One response per prompt from `model` (greedy by default), in prompt order.

    prompts: rows {"id", "prompt"} or a prompt source as in `load_prompts`. out: a .jsonl file to append to
    durably (a rerun resumes). shard: "I/N" keeps only that stable subset of the prompts (as `--shard`).
    settings: max_new_tokens, temperature, top_p, batch_size, system_prompt, precision, seed, backend, base_url,
    progress (see `deltalearn.generate.generate_responses`)."""
    from deltalearn.generate import generate_responses

    rows = load_prompts(prompts) if isinstance(prompts, (str, os.PathLike)) else list(prompts)
    if shard is not None:
        from deltalearn.shards import parse_shard, select_shard

        rows = select_shard(rows, parse_shard(shard, flag="shard="))
    return generate_responses(model, rows, out, **settings)


def make_pairs(generations: Union[PathLike, list[PathLike], dict[str, list[dict]]], out: Optional[PathLike] = None,
               **settings: Any) -> tuple[list[dict], dict]:
    """Preference pairs from generation sets by a stated rule; returns (pairs, summary of every filter).

    generations: {label: rows} (e.g. {"big": dl.generate(...), "small": dl.generate(...)}), or a
    `deltalearn generate` folder / files. settings: the `PairConfig` fields (rule, chosen, rejected, sizes,
    utility, min_margin, control, drop_truncated, seed, ...). out: also save them (pairs.jsonl + summary)."""
    from deltalearn.pairs import load_generations, make_pairs as _make, save_pairs
    from deltalearn.recipe import PairConfig

    gens = generations if isinstance(generations, dict) else load_generations(generations)
    pairs, summary = _make(gens, _config(PairConfig, settings, "make_pairs"))
    if out is not None:
        save_pairs(pairs, out, summary=summary, export=("jsonl",))
    return pairs, summary


def train(pairs: Union[PathLike, list[dict]], out: PathLike, *, progress: bool = True,
          resume: Optional[PathLike] = None, **settings: Any) -> dict:
    """Preference-tune (or SFT) a model on pairs; writes OUT/model, metrics.jsonl, checkpoints; returns the summary
    (its "model_dir" is the tuned model). settings: the `TrainConfig` fields (model, loss, beta, lr, batch_size,
    micro_batch_size, max_steps, lora, precision, ...). A finished OUT is not retrained."""
    from deltalearn.recipe import LoraConfig, TrainConfig
    from deltalearn.train import train as _train

    if isinstance(settings.get("lora"), dict):
        settings["lora"] = _config(LoraConfig, settings["lora"], "train lora")
    return _train(_config(TrainConfig, settings, "train"), pairs, Path(out), progress=progress, resume=resume)


def evaluate(model: PathLike, out: PathLike, *, prompts: Optional[PathLike] = None, label: Optional[str] = None,
             **settings: Any) -> dict:
    """Evaluate a model (a name or a trained `model_dir`) and write OUT/eval/<label>.json; returns the result.

    prompts: held-out prompts for generation-based utilities (a source as in `load_prompts`). settings: the
    `EvalConfig` fields (utilities, max_new_tokens, pairs, lm_eval_tasks, ...) and `evaluate_model`'s options
    (reference, beta, limit, precision, progress)."""
    from deltalearn.evaluate import evaluate_model
    from deltalearn.recipe import EvalConfig, PromptsConfig

    names = {f.name for f in dataclasses.fields(EvalConfig)}
    cfg = _config(EvalConfig, {k: v for k, v in settings.items() if k in names}, "evaluate")
    if prompts is not None:
        cfg.prompts = PromptsConfig(path=str(prompts))
    return evaluate_model(str(model), cfg, Path(out), label=label,
                          **{k: v for k, v in settings.items() if k not in names})


def run(recipe: Union[PathLike, dict], overrides: Optional[list[str]] = None, *, progress: bool = True):
    """Run a whole recipe (a YAML path or the same content as a dict), like `deltalearn run`; overrides are
    "section.key=value" strings. Returns what the recipe's driver returns (the run folder for a pipeline)."""
    from deltalearn.runner import run_recipe
    from deltalearn.recipe import load_recipe

    r = load_recipe(data=recipe, overrides=overrides) if isinstance(recipe, dict) else load_recipe(recipe, overrides)
    return run_recipe(r, progress=progress)


__all__ = ["generate", "make_pairs", "train", "evaluate", "run", "load_prompts"]
