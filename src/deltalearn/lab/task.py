"""The tiny lab's task: sums of single digits with a worked, running-sum solution, graded by exact answer.

    prompt   6+9+5+1+6=
    solution 6+9=15,15+5=20,20+1=21,21+6=27,Answer:27

Why this task (tiny-lab notes): a from-scratch model on a 2-core CPU learns it in minutes, its quality is
exactly checkable (the paper's semantic delta needs a utility that is not a judge's opinion), and capability
grows gradually with model size and training steps, so checkpoints give a ladder of teachers. Two-digit terms were
too slow to learn here.

Splits are a pure function of the problem (a hash of its digits), so problems drawn fresh during pretraining can
never be dev or eval problems, whatever the seed:
    train (pretraining) 70% | pref (preference-tuning prompts) 10% | dev (choosing checkpoints, steps, lr) 10%
    | eval (the reported numbers) 10%.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from deltalearn.utility import exact_answer

NAME = "running_sum"
UTILITY = "exact_answer"
"""The project utility that grades this task (the lab's evals score with it by name)."""
TASKS = ("running_sum", "items", "lookups")
MIN_TERMS, MAX_TERMS = 4, 7
SPLITS = ("train", "pref", "dev", "eval")
# Hash buckets (of 20) per split: 14 / 2 / 2 / 2.
_BUCKETS = {"train": range(0, 14), "pref": range(14, 16), "dev": range(16, 18), "eval": range(18, 20)}


@dataclass(frozen=True)
class Problem:
    terms: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return "+".join(map(str, self.terms)) + "="

    @property
    def answer(self) -> str:
        return str(sum(self.terms))

    @property
    def solution(self) -> str:
        """The worked solution: one running-sum step per term, then the answer."""
        steps, total = [], self.terms[0]
        for t in self.terms[1:]:
            steps.append(f"{total}+{t}={total + t}")
            total += t
        return ",".join(steps) + f",Answer:{total}"

    @property
    def id(self) -> str:
        return "sum-" + "".join(map(str, self.terms))

    @property
    def split(self) -> str:
        return split_of(self.terms)


def split_of(terms: tuple[int, ...]) -> str:
    bucket = int(hashlib.sha256(("+".join(map(str, terms))).encode()).hexdigest()[:8], 16) % 20
    return next(name for name, r in _BUCKETS.items() if bucket in r)


def parse_prompt(prompt: str) -> Problem:
    """The problem a prompt string states (inverse of Problem.prompt)."""
    body = prompt.strip()
    if not body.endswith("=") or not all(p.isdigit() and len(p) == 1 for p in body[:-1].split("+")):
        raise ValueError(f"not a lab prompt (digits joined by '+', ending in '='): {prompt!r}")
    return Problem(tuple(int(p) for p in body[:-1].split("+")))


def random_problem(rng: random.Random, split: str) -> Problem:
    """A random problem of `split` (rejection sampling over the hash buckets)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    while True:
        n = rng.randint(MIN_TERMS, MAX_TERMS)
        p = Problem(tuple(rng.randint(0, 9) for _ in range(n)))
        if p.split == split:
            return p


def sample_problems(split: str, n: int, seed: int, *, unique: bool = True) -> list[Problem]:
    """`n` problems of a split from a seed, distinct when `unique` (eval and pair sets)."""
    rng = random.Random(f"{split}:{seed}")
    out, seen = [], set()
    while len(out) < n:
        p = random_problem(rng, split)
        if unique and p.terms in seen:
            continue
        seen.add(p.terms)
        out.append(p)
    return out


def prompt_rows(problems: list[Problem]) -> list[dict]:
    """Prompt rows as the generation and eval code read them; `reference` is the exact answer to grade against."""
    return [{"id": p.id, "prompt": p.prompt, "reference": p.answer, "n_terms": len(p.terms)} for p in problems]


def grade(response: str, reference: str) -> float:
    """1.0 when the response's final answer is the reference. The project's one exact-answer utility, so the
    lab is graded exactly as any recipe using `utility: exact_answer` would be."""
    return exact_answer(response, reference)


def get_task(name: str):
    """The task `experiment.task` names: `running_sum` (this module: the lab's documented counterexample), or a
    many-items task from `deltalearn.lab.items` -- `items` (digit sums) or `lookups` (a random table). Each has
    the same interface: NAME, UTILITY, random_problem, sample_problems, prompt_rows, parse_prompt, grade, and
    problems with .prompt/.solution/.answer/.id."""
    import sys

    from deltalearn.recipe import ConfigError

    if name == NAME:
        return sys.modules[__name__]
    if name in ("items", "lookups"):
        from deltalearn.lab import items

        return items.DIGIT_SUMS if name == "items" else items.LOOKUPS
    raise ConfigError(f"experiment.task: unknown task {name!r}; one of {', '.join(TASKS)}")
