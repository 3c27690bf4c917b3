"""How much of a lab arm's gain is training noise: retrain finished arms of a lab run with other training seeds
(the order of the pairs; the pairs, the lr and the eval prompts stay), and report each seed's paired gain.

The paired s.e. of one arm (over eval prompts) holds the student's eval noise only; on the lookups task an arm's
change is whole-key flips of the keys the student hesitates on, which a different data order can flip the other
way, so the spread over seeds is the error bar a claim about one pair set needs (issue 14).

    deltalearn lab --recipe recipes/lab-lookups.yaml             # once: runs/lab-lookups
    python benchmarks/lab_train_seeds.py recipes/lab-lookups.yaml runs/lab-lookups --arms main-dpo_norm self-dpo_norm --seeds 1 2 3
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from deltalearn.io import read_json
from deltalearn.lab.experiments import BASE, Lab, arm_job, main_arms, run_jobs, self_arms, sweep_arms
from deltalearn.lab.ladder import build_ladder
from deltalearn.recipe import load_recipe


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", help="the lab recipe the run was made with")
    ap.add_argument("run", help="a finished `deltalearn lab` (or --sweep) run folder")
    ap.add_argument("--arms", nargs="+", default=["main-dpo_norm", "self-dpo_norm"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    args = ap.parse_args()
    load0, t0 = os.getloadavg()[0], time.time()
    recipe = load_recipe(args.recipe)
    lab = Lab(recipe, args.run, progress=False)
    lab.ladder = build_ladder(lab.s.ladder, progress=False)
    sel = lab.dir / "dev" / "selection.json"
    lr = read_json(sel)["lr"] if sel.exists() else recipe.train.lr
    specs = {a.name: a for a in main_arms(lab.s) + self_arms(lab.s) + sweep_arms(lab.s)}
    where = lab.dir / "train-seeds"
    jobs, names = [], []
    for name in args.arms:
        arm = specs[name]
        pairs, _ = lab.build_pairs(arm)
        for seed in args.seeds:
            cfg = dict(lab.train_cfg(arm.loss, lr), seed=seed)
            label = f"{name}-seed{seed}"
            names.append((name, seed, label))
            jobs.append((arm_job, dict(name=label, cfg=cfg, pairs_path=str(pairs), arm_dir=str(where / "arms" / label),
                                       eval_path=str(lab.dir / "eval_prompts.jsonl"),
                                       eval_json=str(where / "eval" / f"{label}.json"),
                                       max_new_tokens=lab.s.max_new_tokens, batch_size=lab.s.gen_batch_size,
                                       utility=lab.T.UTILITY)))
    run_jobs(jobs, lab.s.workers, "train seeds", progress=False)
    (where / "eval" / f"{BASE}.json").write_bytes((lab.dir / "eval" / f"{BASE}.json").read_bytes())
    print(f"| arm | seed | gain vs base (pts, paired) | fixed/broken |\n|---|---|---|---|")
    for name in args.arms:
        gains = [lab.gain(name)[0]]
        g, se, f, b = lab.gain(name)
        print(f"| {name} | {recipe.train.seed} (the run's) | {g * 100:+.2f} ± {se * 100:.2f} | {f}/{b} |")
        for n, seed, label in names:
            if n != name:
                continue
            g, se, f, b = lab.gain(label, where=where)
            gains.append(g)
            print(f"| {name} | {seed} | {g * 100:+.2f} ± {se * 100:.2f} | {f}/{b} |")
        m, sd = statistics.mean(gains), statistics.stdev(gains)
        print(f"| {name} | mean of {len(gains)} | {m * 100:+.2f} ± {sd / len(gains) ** 0.5 * 100:.2f} "
              f"(seed-to-seed sd {sd * 100:.2f}) | |")
    print(f"\nlr {lr:g}; wall {time.time() - t0:.0f} s (load average {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
