"""`dl.load_prompts` takes the split like the CLI: a script trains on train rows and `dl.evaluate` scores held-out
eval rows (the README's API example scored two of its four training prompts)."""

import pytest

import deltalearn as dl
from deltalearn.io import DataError
from deltalearn.prompts import load_prompts

SRC = "builtin:sections_prompts"


def test_load_prompts_defaults_to_the_train_split_and_evaluation_is_held_out():
    train = dl.load_prompts(SRC, limit=4)
    held_out = load_prompts(SRC, default_split="eval", limit=2)  # what dl.evaluate(prompts=SRC, limit=2) scores
    assert not {r["id"] for r in train} & {r["id"] for r in held_out}
    assert all(r.get("split") == "train" for r in train)


def test_load_prompts_split_argument():
    assert all(r["split"] == "eval" for r in dl.load_prompts(SRC, split="eval"))
    every = dl.load_prompts(SRC, default_split=None)
    assert len(every) > len(dl.load_prompts(SRC))
    with pytest.raises(DataError, match="split"):
        dl.load_prompts(SRC, split="nope")
