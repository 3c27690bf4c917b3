"""Timings for `deltalearn theory` (issue 5's speed targets), on whatever CPU this runs on.

    python benchmarks/bench_theory.py            # C1-only Corollary curve + the SGD subset
    python benchmarks/bench_theory.py --full     # also the whole default `deltalearn theory` run

Targets: the full Corollary 6.2 curve (>= 12 values of d from 10 to 10,000, >= 1,000 teacher pairs each, C1 only)
under 60 s on 2 CPU cores; with SGD for a subset of pairs, under 5 minutes. Wall time depends on what else runs on
the machine, so the script also prints process CPU time and the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from deltalearn import theory as th


def timed(label: str, fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    print(f"{label:<58} wall {time.perf_counter() - w:7.1f} s   cpu {time.process_time() - c:7.1f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--sgd-pairs", type=int, default=200)
    ap.add_argument("--full", action="store_true", help="also time the whole default `deltalearn theory` run")
    args = ap.parse_args()
    dims = th.TheoryConfig().dims
    print(f"dims ({len(dims)}): {list(dims)}; cores visible: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.1f}")
    readings = [th.make_targets(0.8, 0.7, 0.6, r) for r in th.READINGS]

    c1_only = th.TheoryConfig(pairs=args.pairs, sgd_pairs=0)
    for t in readings:
        rows = timed(f"C1 curve, {args.pairs} pairs x {len(dims)} d, {t.reading}",
                     lambda: th.corollary(c1_only, t, np.random.default_rng(0)))
        print("   C1 fractions:", {r["d"]: round(r["c1"], 3) for r in rows})
    for t in readings:
        timed(f"smallest d for 90% (bisection, 200k pairs), {t.reading}", lambda: th.smallest_d_c1(t))

    with_sgd = th.TheoryConfig(pairs=args.pairs, sgd_pairs=args.sgd_pairs)
    for t in readings:
        rows = timed(f"C1 + SGD on {args.sgd_pairs} pairs x {len(dims)} d, {t.reading}",
                     lambda: th.corollary(with_sgd, t, np.random.default_rng(0)))
        print("   SGD improving:", {r["d"]: round(r["sgd"], 3) for r in rows})

    if args.full:
        with tempfile.TemporaryDirectory() as out:
            res = timed("whole default `deltalearn theory` run", lambda: th.run(th.TheoryConfig(), out))
        print("   stage timings (wall, s):", res["timings_s"])
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
