"""The whole pipeline of one recipe, stage by stage, each writing an artifact under runs/NAME/.

    prompts -> generate -> pair -> train (one run per arm) -> eval -> report

A stage whose artifact is complete is skipped, so an interrupted run is resumed by running the same command:
generations are append-only per model, pairs are written atomically, training resumes from its last checkpoint,
and finished arms are not retrained. `--dry-run` validates the recipe and prints the plan and its compute
without loading any model. The paper's experiments (`kind: sections | lab | sweep`) have their own drivers;
`deltalearn.runner` dispatches a recipe to its driver (this module imports no other driver, so none imports back).
"""

from __future__ import annotations

import time
from pathlib import Path

from deltalearn.io import write_jsonl_atomic
from deltalearn.manifest import input_hash, update_manifest
from deltalearn.recipe import Arm, ConfigError, Recipe, arm_configs, to_dict


def _stage(run_dir: Path, name: str):
    """Context manager that records a stage's wall time in the manifest."""

    class _Timer:
        def __enter__(self):
            self.t = time.time()
            print(f"[{name}]", flush=True)
            return self

        def __exit__(self, exc_type, *_):
            if exc_type is None:
                update_manifest(run_dir, stage=name, seconds=round(time.time() - self.t, 2))

    return _Timer()


def run_pipeline(recipe: Recipe, *, progress: bool = True, fallback_checkpoint: bool = False) -> Path:
    from deltalearn.locks import artifact_lock

    from deltalearn.outputs import claim

    run_dir = claim(recipe.run_dir, "run", flag="output_dir")
    # One `deltalearn run` per run folder; each stage below also locks its own artifact (re-entrant here).
    with artifact_lock(run_dir, what="run folder"):
        return _run_pipeline(recipe, run_dir, progress=progress, fallback_checkpoint=fallback_checkpoint)


def _run_pipeline(recipe: Recipe, run_dir: Path, *, progress: bool, fallback_checkpoint: bool) -> Path:
    from deltalearn.generate import generate_responses, model_slug
    from deltalearn.pairs import load_generations, make_pairs, save_pairs
    from deltalearn.prompts import load_prompts
    from deltalearn.train import train

    pc = recipe.prompts
    update_manifest(run_dir, recipe=to_dict(recipe), inputs={"prompts": pc.path or pc.dataset,
                                                             "prompts_sha256": input_hash(pc.path)})
    with _stage(run_dir, "prompts"):
        prompts = load_prompts(pc.path, column=pc.column, id_column=pc.id_column, dataset=pc.dataset,
                               split=pc.split, default_split="train", limit=pc.limit)
        write_jsonl_atomic(run_dir / "prompts.jsonl", prompts)
    g = recipe.generate
    gen_dir = run_dir / "generations"
    with _stage(run_dir, "generate"):
        for model in g.models:
            generate_responses(model, prompts, gen_dir / f"{model_slug(model)}.jsonl", max_new_tokens=g.max_new_tokens,
                               temperature=g.temperature, top_p=g.top_p, batch_size=g.batch_size,
                               system_prompt=g.system_prompt, precision=g.precision, seed=g.seed,
                               backend=g.backend, base_url=g.base_url, progress=progress,
                               concurrency=g.concurrency, tensor_parallel_size=g.tensor_parallel_size)
    arms = recipe.arms or [Arm(name="main")]
    # Arms that override nothing in `pair` share one pair set; an arm with pair overrides (e.g. the reversed
    # control) gets its own.
    pairs_dir = {arm.name: run_dir / (f"pairs-{arm.name}" if arm.pair else "pairs") for arm in arms}
    with _stage(run_dir, "pair"):
        generations = load_generations([gen_dir])
        for arm in arms:
            out = pairs_dir[arm.name]
            if (out / "state.json").exists():  # save_pairs renames a complete dataset into place
                continue
            pair_cfg, _ = arm_configs(recipe, arm)
            pairs, summary = make_pairs(generations, pair_cfg)
            save_pairs(pairs, out, summary=summary)
            print(f"  {out.name}: {len(pairs)} pairs  {summary}")
    with _stage(run_dir, "train"):
        for arm in arms:
            _, train_cfg = arm_configs(recipe, arm)
            if train_cfg.model is None:
                raise ConfigError("train.model is required to train")
            s = train(train_cfg, pairs_dir[arm.name], run_dir / "arms" / arm.name, progress=progress,
                      fallback=fallback_checkpoint)
            print(f"  arm {arm.name}: {s['steps']} steps, final loss {s['final_loss']:.4f}, {s['wall_s']:.0f} s")
    if recipe.eval.prompts is not None or recipe.eval.pairs or recipe.eval.lm_eval_tasks:
        from deltalearn.evaluate import evaluate_run

        with _stage(run_dir, "eval"):
            evaluate_run(run_dir, recipe.eval, base=recipe.train.model, progress=progress)
    with _stage(run_dir, "report"):
        from deltalearn.report import build_report

        path = build_report([run_dir])
        print(f"report: {path}")
    return run_dir
