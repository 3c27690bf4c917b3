"""The tiny lab's second task: many independent items in one response, graded per item.

    prompt   728,771,252,930,519,650,169,108=
    solution 017,015,009,012,015,011,016,009

Each item is a three-digit key whose answer is the sum of its digits, zero-padded to three digits (`728` -> `017`).
A response answers the prompt's `ITEMS` items in order, and its utility is the *fraction of items right*
(`utility.item_accuracy`; an item is right when its three digits are).

Why this task (issue 14): the running-sum task is a counterexample to delta learning -- a weak sample's later steps
are right arithmetic on a wrong running total, so one error is inherited by every later token and "better sample"
is not "better tokens". Here an item's answer depends on its key alone, so a weaker teacher makes more errors, each
on its own item (measured: the errors are off-by-one sums of single items), and chosen and rejected differ in
*which items are right*. That is the regime of the theory (Section 6): teachers whose errors are nearly independent
of each other's and of the student's.

Layout, chosen by measurement (2-core CPU, from-scratch Llama models):
- Keys and answers have the same width (three digits and a comma), so each answer slot lies at a fixed distance
  from its key (the prompt's length) and a model finds it with one relative-position attention pattern. A first
  design echoed each key before its answer (`374=6,512=3`): a d32 model had to copy each key from the prompt, and
  after 800 steps it had learned no copying at all (dev item accuracy 0.1%).
- Digit sums, not a random lookup table: a random table (key -> three random digits, 400 keys) was not learned at
  all in 800 steps by d32 or d64 (0.1-0.5%); sums are learned gradually.
- Three-digit keys, not two: two-digit sums (100 facts) took a d32 model from 10% to 99.9% within 500 steps (a
  student at 100% has nothing left to gain); three-digit sums rise gradually (d32: 57% at 800 steps; d64: 17% at
  100 steps, 85% at 350, 99.9% at 800), which gives a ladder.

Splits are by prompt (a hash of its keys), as in the running-sum task, so pretraining never sees a dev or eval
prompt; the 1,000 keys themselves are shared by all splits (eval prompts are new combinations of the same items).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from deltalearn.utility import item_accuracy, item_scores

NAME = "items"
UTILITY = "item_accuracy"
"""The project utility that grades this task (the lab's evals score with it by name)."""
KEY_DIGITS = 3
ITEMS = 8
SPLITS = ("train", "pref", "dev", "eval")
_BUCKETS = {"train": range(0, 14), "pref": range(14, 16), "dev": range(16, 18), "eval": range(18, 20)}


def value_of(key: str) -> str:
    """An item's answer: the sum of its key's digits, zero-padded to the key's width."""
    return f"{sum(map(int, key)):0{KEY_DIGITS}d}"


@dataclass(frozen=True)
class Problem:
    keys: tuple[str, ...]

    @property
    def prompt(self) -> str:
        return ",".join(self.keys) + "="

    @property
    def solution(self) -> str:
        return ",".join(value_of(k) for k in self.keys)

    @property
    def answer(self) -> str:
        """The reference the grader compares against: the whole correct solution, item by item."""
        return self.solution

    @property
    def id(self) -> str:
        return "items-" + "-".join(self.keys)

    @property
    def split(self) -> str:
        return split_of(self.keys)


def split_of(keys: tuple[str, ...]) -> str:
    bucket = int(hashlib.sha256(",".join(keys).encode()).hexdigest()[:8], 16) % 20
    return next(name for name, r in _BUCKETS.items() if bucket in r)


def parse_prompt(prompt: str) -> Problem:
    """The problem a prompt string states (inverse of Problem.prompt)."""
    body = prompt.strip()
    keys = body[:-1].split(",")
    if not body.endswith("=") or not all(len(k) == KEY_DIGITS and k.isdigit() for k in keys):
        raise ValueError(f"not an items prompt ({KEY_DIGITS}-digit keys joined by ',', ending in '='): {prompt!r}")
    return Problem(tuple(keys))


def random_problem(rng: random.Random, split: str) -> Problem:
    """`ITEMS` distinct random keys, a prompt of `split` (rejection sampling over the hash buckets)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    while True:
        p = Problem(tuple(f"{i:0{KEY_DIGITS}d}" for i in rng.sample(range(10 ** KEY_DIGITS), ITEMS)))
        if p.split == split:
            return p


def sample_problems(split: str, n: int, seed: int, *, unique: bool = True) -> list[Problem]:
    """`n` problems of a split from a seed, distinct when `unique` (eval and pair sets)."""
    rng = random.Random(f"{NAME}:{split}:{seed}")
    out, seen = [], set()
    while len(out) < n:
        p = random_problem(rng, split)
        if unique and p.keys in seen:
            continue
        seen.add(p.keys)
        out.append(p)
    return out


def prompt_rows(problems: list[Problem]) -> list[dict]:
    """Prompt rows as the generation and eval code read them; `reference` is the correct solution."""
    return [{"id": p.id, "prompt": p.prompt, "reference": p.answer, "n_items": len(p.keys)} for p in problems]


def grade(response: str, reference: str) -> float:
    """Fraction of the items right (`utility.item_accuracy`): item i is right when the response's i-th
    comma-separated item is exactly the reference's (`017`)."""
    return item_accuracy(response, reference)


def items_right(response: str, reference: str) -> list[int]:
    """1/0 per reference item (for the kappa analog: which items each side of a pair gets right)."""
    return item_scores(response, reference)
