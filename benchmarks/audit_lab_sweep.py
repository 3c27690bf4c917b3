"""Validate `deltalearn audit` on a finished lab sweep: audit every arm's pairs (as before training), predict
its gain from a curve fitted to the other arms (leave-one-out), and rank-correlate with the measured gains.

    deltalearn lab --sweep                      # once: runs/lab-sweep (cached ladder: a few minutes)
    python benchmarks/audit_lab_sweep.py runs/lab-sweep --sample 200
"""

import argparse
import json
import os
import sys
import time

from deltalearn.audit import validate_on_sweep


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a `deltalearn lab --sweep` run folder")
    ap.add_argument("--student", default="lab:student")
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--out", help="write the full result as JSON here")
    args = ap.parse_args()
    load0, t0 = os.getloadavg()[0], time.time()
    v = validate_on_sweep(args.run, student=args.student, sample=args.sample)
    pts = 100.0  # fractions -> percentage points
    print("| arm | delta (lab) | delta (audit) | measured gain | LOO predicted gain [band] | student margin | "
          "chosen - student | flags |")
    print("|---|---|---|---|---|---|---|---|")
    for r in v["rows"]:
        band = f"[{r['band'][0] * pts:+.2f}, {r['band'][1] * pts:+.2f}]" if r["band"] else "-"
        flags = ", ".join(f for f, on in (("both far above", r["both_far_above"]),
                                          ("chosen far below", r["chosen_far_below"])) if on) or "-"
        print(f"| {r['arm']} | {r['delta_lab'] * pts:.1f} | {r['delta_audit'] * pts:.1f} | {r['gain'] * pts:+.2f} | "
              f"{r['predicted'] * pts:+.2f} {band} | {r['margin']:+.3f} | {r['chosen_minus_student'] * pts:+.1f} | "
              f"{flags} |")
    print()
    for k, s in v["spearman"].items():
        print(f"Spearman(measured gain, {k}) = {s:+.2f}" if s is not None else f"Spearman(gain, {k}): n/a")
    print(f"measured gain inside its leave-one-out band: {v['inside_band']} of {v['arms']}")
    print(f"wall {time.time() - t0:.0f} s; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end",
          file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(v, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
