"""The tiny lab's many-items tasks: one response answers 8 independent items, graded by the fraction right.

    items    728,771,252,930,519,650,169,108=  ->  017,015,009,012,015,011,016,009   (digit sums, 3-digit keys)
    lookups  37,05,81,62,14,90,26,43,          ->  58,07,33,...                      (a fixed random table)

A response answers the prompt's `ITEMS` keys in order; its utility is the *fraction of items right*
(`utility.item_accuracy`; an item is right when all its digits are).

Why (issue 14): the running-sum task is a counterexample to delta learning -- a weak sample's later steps are
right arithmetic on a wrong running total, so one error is inherited by every later token and "better sample" is
not "better tokens". Here an item's answer depends on its key alone, so a weaker teacher makes more errors, each on
its own item, and chosen and rejected differ in *which items are right*: the regime of the theory (Section 6),
as far as the teachers' errors are also independent of each other's and of the student's.

- `items` (digit sums) has independent items, but measured errors are *ordinal and systematic*: almost all are
  off-by-one sums, and their sign depends on the stage of training (an early d64 checkpoint overshoots, a later
  one undershoots, as does the student), so chosen-minus-rejected carries a shared direction.
- `lookups` (a random table: key -> two pseudo-random digits) has no structure an error could share: a wrong
  value is just another entry.

Layout, chosen by measurement (2-core CPU, from-scratch Llama models):
- Keys and answers have the same width (digits and a comma), so each answer slot lies at a fixed distance from its
  key (the prompt's length) and a model finds it with one relative-position attention pattern. A first design
  echoed each key before its answer (`374=6,512=3`): a d32 model had to copy each key from the prompt, and after
  800 steps it had learned no copying at all (dev item accuracy 0.1%).
- The lookups prompt ends with ',' so that every answer slot is predicted from the same token. With '=' (as
  digit sums have), a first lookups ladder learned slots 2-8 long before slot 1: its 91% student was 100% right
  on slots 2-8 and 27% on slot 1, where its teachers were at 9% too, so all the student's errors sat where the
  teachers' did (P(chosen wrong | student wrong) 0.91 against 0.25 elsewhere) and the delta had nothing to fix.
  Digit sums show no such slot effect (student 74-87% on every slot).
- Table size: a 400-key table of three-digit values was not learned in 800 steps by d32 or d64 (0.1-0.5%); the
  100-key table of two-digit values rises gradually (d32: 2% at 100 steps, 20% at 500, 43% at 800).
- Digit sums on three-digit keys, not two: two-digit sums took a d32 model from 10% to 99.9% within 500 steps;
  three-digit sums rise gradually (d32: 57% at 800 steps; d64: 17% at 100 steps, 85% at 350, 99.9% at 800).

Splits are by prompt (a hash of its keys), as in the running-sum task, so pretraining never sees a dev or eval
prompt; the keys themselves are shared by all splits (eval prompts are new combinations of the same items).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable

from deltalearn.utility import item_accuracy, item_scores

UTILITY = "item_accuracy"
"""The project utility that grades these tasks (the lab's evals score with it by name)."""
ITEMS = 8
SPLITS = ("train", "pref", "dev", "eval")
_BUCKETS = {"train": range(0, 14), "pref": range(14, 16), "dev": range(16, 18), "eval": range(18, 20)}


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def digit_sum(key: str) -> str:
    """`items`: the sum of the key's digits, zero-padded to the key's width (`728` -> `017`)."""
    return f"{sum(map(int, key)):0{len(key)}d}"


def table_value(key: str) -> str:
    """`lookups`: a fixed pseudo-random value of the key's width, a pure function of the key."""
    return f"{_h('lookup-table:' + key) % 10 ** len(key):0{len(key)}d}"


def split_of(keys: tuple[str, ...]) -> str:
    bucket = _h(",".join(keys)) % 20
    return next(name for name, r in _BUCKETS.items() if bucket in r)


@dataclass(frozen=True)
class Problem:
    keys: tuple[str, ...]
    value: Callable[[str], str]
    name: str
    end: str = "="

    @property
    def prompt(self) -> str:
        return ",".join(self.keys) + self.end

    @property
    def solution(self) -> str:
        return ",".join(self.value(k) for k in self.keys)

    @property
    def answer(self) -> str:
        """The reference the grader compares against: the whole correct solution, item by item."""
        return self.solution

    @property
    def id(self) -> str:
        return f"{self.name}-" + "-".join(self.keys)

    @property
    def split(self) -> str:
        return split_of(self.keys)


@dataclass(frozen=True)
class ItemsTask:
    """One many-items task: `ITEMS` keys of `key_digits` digits, each answered by `value(key)`. It has the same
    interface as the running-sum task module (`task.get_task`)."""

    NAME: str
    key_digits: int
    value: Callable[[str], str]
    end: str = "="
    """The prompt's last character: the token every answer slot is predicted from is ',' except the first, which
    is predicted from this one."""
    UTILITY: str = UTILITY
    SPLITS: tuple = SPLITS
    ITEMS: int = ITEMS

    split_of = staticmethod(split_of)

    def problem(self, keys) -> Problem:
        return Problem(tuple(keys), self.value, self.NAME, self.end)

    def parse_prompt(self, prompt: str) -> Problem:
        """The problem a prompt string states (inverse of Problem.prompt)."""
        body = prompt.strip()
        keys = body[:-1].split(",")
        if not body.endswith(self.end) or not all(len(k) == self.key_digits and k.isdigit() for k in keys):
            raise ValueError(f"not a {self.NAME} prompt ({self.key_digits}-digit keys joined by ',', ending in "
                             f"'{self.end}'): "
                             f"{prompt!r}")
        return self.problem(keys)

    def random_problem(self, rng: random.Random, split: str) -> Problem:
        """`ITEMS` distinct random keys, a prompt of `split` (rejection sampling over the hash buckets)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
        while True:
            p = self.problem(f"{i:0{self.key_digits}d}" for i in rng.sample(range(10 ** self.key_digits), ITEMS))
            if p.split == split:
                return p

    def sample_problems(self, split: str, n: int, seed: int, *, unique: bool = True) -> list[Problem]:
        """`n` problems of a split from a seed, distinct when `unique` (eval and pair sets)."""
        rng = random.Random(f"{self.NAME}:{split}:{seed}")
        out, seen = [], set()
        while len(out) < n:
            p = self.random_problem(rng, split)
            if unique and p.keys in seen:
                continue
            seen.add(p.keys)
            out.append(p)
        return out

    @staticmethod
    def prompt_rows(problems: list[Problem]) -> list[dict]:
        """Prompt rows as the generation and eval code read them; `reference` is the correct solution."""
        return [{"id": p.id, "prompt": p.prompt, "reference": p.answer, "n_items": len(p.keys)} for p in problems]

    @staticmethod
    def grade(response: str, reference: str) -> float:
        """Fraction of the items right (`utility.item_accuracy`): item i is right when the response's i-th
        comma-separated item is exactly the reference's."""
        return item_accuracy(response, reference)

    @staticmethod
    def items_right(response: str, reference: str) -> list[int]:
        """1/0 per reference item (for the kappa analog: which items each side of a pair gets right)."""
        return item_scores(response, reference)


DIGIT_SUMS = ItemsTask("items", 3, digit_sum)
LOOKUPS = ItemsTask("lookups", 2, table_value, end=",")
