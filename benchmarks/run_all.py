"""Run every benchmark in this folder (`bench_*.py`), one after another, and print their tables (`make bench`).

    python benchmarks/run_all.py                  # all of them
    python benchmarks/run_all.py train generate   # only bench_train.py and bench_generate.py

Each script runs in its own process with default arguments and prints its own table; this driver adds the load
average before and after each one (timings mean little on a busy machine) and a summary of exit codes. It exits
non-zero if any benchmark failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        wanted = {a.removeprefix("bench_").removesuffix(".py") for a in argv}
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
        missing = wanted - {s.stem.removeprefix("bench_") for s in scripts}
        if missing:
            print(f"no benchmark named {', '.join(sorted(missing))}; have: "
                  f"{', '.join(s.stem for s in sorted(HERE.glob('bench_*.py')))}", file=sys.stderr)
            return 2
    results = []
    for script in scripts:
        print(f"\n######## {script.name}  (load average {_load()})", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        results.append((script.name, rc, time.time() - t0))
        print(f"######## {script.name}: exit {rc} after {time.time() - t0:.0f} s (load average {_load()})",
              flush=True)
    print("\n######## summary")
    for name, rc, dt in results:
        print(f"   {name:<24} {'ok' if rc == 0 else f'FAILED (exit {rc})':<18} {dt:7.0f} s")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
