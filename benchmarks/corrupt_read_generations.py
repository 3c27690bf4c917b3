"""Read a `deltalearn lab --corrupt` run's generations, not only its means: per arm, the items fixed and broken
against the base student on the eval prompts, by key (the few keys that decide a gain), and what the broken items
became (the rejected side's value, another table value, or something else).
    python benchmarks/corrupt_read_generations.py runs/lab-lookups-corrupt [ARM ...]
"""
import json
import sys
from collections import Counter
from pathlib import Path


def responses(path: Path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def main(run: str, arms: list[str]) -> None:
    d = Path(run)
    top = d.parent if d.name == "dev" else d
    wrong = json.loads((top / "wrong_values.json").read_text()) if (top / "wrong_values.json").exists() else {}
    base = responses(d / "eval" / "base.responses.jsonl")
    arms = arms or sorted(p.name[:-len(".responses.jsonl")] for p in (d / "eval").glob("*.responses.jsonl")
                          if not p.name.startswith("base."))
    for arm in arms:
        new = responses(d / "eval" / f"{arm}.responses.jsonl")
        fixed, broken, became = Counter(), Counter(), Counter()
        to_mode = 0
        for pid, b in base.items():
            n = new.get(pid)
            if n is None:
                continue
            keys = b["prompt"].rstrip("=,").split(",")
            want = b["reference"].split(",")
            bi = [x.strip() for x in b["response"].split(",")]
            ni = [x.strip() for x in n["response"].split(",")]
            for i, (k, w) in enumerate(zip(keys, want)):
                bo = i < len(bi) and bi[i] == w
                no = i < len(ni) and ni[i] == w
                if no and not bo:
                    fixed[k] += 1
                elif bo and not no:
                    broken[k] += 1
                    became[ni[i] if i < len(ni) else "<missing>"] += 1
                    to_mode += i < len(ni) and wrong.get(k) == ni[i]
        net = sum(fixed.values()) - sum(broken.values())
        print(f"{arm}: items fixed {sum(fixed.values())}, broken {sum(broken.values())} (net {net:+d}); "
              f"keys fixed {len(fixed)}, broken {len(broken)}")
        print(f"   top fixed keys {fixed.most_common(4)}; top broken keys {broken.most_common(4)}")
        print(f"   broken items became {became.most_common(4)}; the student's most likely wrong value for the key: "
              f"{to_mode} of {sum(broken.values())}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
