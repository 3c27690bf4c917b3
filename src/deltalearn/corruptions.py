"""Corruptions: plain functions that make a worse copy of a response, for the `corrupt` pairing rule.

The paper leaves open whether a targeted corruption can make the delta instead of a weaker model (issue 32). A
corruption fixes the delta exactly (how many items, which kind of error) and its errors are independent of the
student's unless it is told otherwise (`student_wrong_items`), the regime the theory (Section 6) asks for.

Each corruption is `fn(text, strength, rng, context) -> (corrupted text, info)`:
- `strength`: how much to break. 0 is the identity (the zero-delta control); a corruption that cannot break
  `text` at that strength (too few sentences, items or words) returns `text` unchanged, and the rule counts it.
- `rng`: a `random.Random` seeded per prompt id by the rule, so a pair is the same whatever rows surround it.
- `context`: `prompt` (the last user message's text), `reference` (or None), and the rule's
  `pair.corruption_args` (e.g. `wrong_values`).
- `info`: what the corruption did (its own measure of the delta), stored in the pair's provenance and read by
  `deltalearn audit`.

A user's own corruption is `module:function` with the same signature; it may return the text alone.
"""

from __future__ import annotations

import importlib
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from deltalearn.recipe import ConfigError

Result = tuple[str, dict]


@dataclass(frozen=True)
class Corruption:
    fn: Callable[[str, float, random.Random, dict], Any]
    strength: str
    """What the strength counts: 'count' (a whole number >= 0), 'fraction' (0 <= s < 1) or 'any' (>= 0)."""
    doc: str


# ---------------------------------------------------------------------------------------------------------
# Items: comma-separated answers, one per key of the prompt (the lab's lookups / digit-sum tasks)
# ---------------------------------------------------------------------------------------------------------


def _keys(prompt: str) -> list[str]:
    """The prompt's keys: its comma-separated fields before the final '=' or ','."""
    return [k.strip() for k in prompt.strip().rstrip("=,").split(",")]


def _wrong_uniform(got: str, want: str | None, rng: random.Random) -> str:
    """A uniformly random value of the item's width (digits) that is neither the current one nor the right one."""
    width = len(want) if want else max(1, len(got))
    avoid = {got, want}
    if 10 ** width <= len(avoid):
        raise ValueError(f"no wrong value of width {width} differs from {got!r} and {want!r}")
    while True:
        v = f"{rng.randrange(10 ** width):0{width}d}"
        if v not in avoid:
            return v


def _order(got: list[str], want: list[str] | None, rng: random.Random) -> list[int]:
    """Items to corrupt, in order: a random order of the right items, then a random order of the rest (with a
    reference each corrupted item is a right -> wrong flip while there are right items left, so m items take
    min(m, right items) off the utility)."""
    idx = list(range(len(got)))
    rng.shuffle(idx)
    if want is None:
        return idx
    return [i for i in idx if got[i] == want[i]] + [i for i in idx if got[i] != want[i]]


def _corrupt_items(text: str, m: float, rng: random.Random, context: dict, pick: Callable) -> Result:
    m = int(m)
    ref = context.get("reference")
    got = [x.strip() for x in text.split(",")]
    want = None
    if ref is not None:  # aligned by position; a malformed response's extra items have no right value
        w = [x.strip() for x in str(ref).split(",")]
        want = [w[i] if i < len(w) else None for i in range(len(got))]
    if m == 0 or len(got) < m:  # exactly m or nothing: a response with fewer items is left as it is
        return text, {"items_changed": 0, "items": len(got)}
    order = _order(got, want, rng)[:m]
    out = list(got)
    right_lost = 0
    for i in order:
        w = want[i] if want else None
        out[i] = pick(i, got[i], w, rng)
        right_lost += w is not None and got[i] == w
    info = {"items_changed": m, "items": len(got)}
    if want is not None:
        info["right_items_lost"] = right_lost
    return ",".join(out), info


def wrong_items(text: str, strength: float, rng: random.Random, context: dict) -> Result:
    """m items (strength) replaced by a uniformly random wrong value of the same width; the right items first."""
    return _corrupt_items(text, strength, rng, context, lambda i, got, want, r: _wrong_uniform(got, want, r))


def student_wrong_items(text: str, strength: float, rng: random.Random, context: dict) -> Result:
    """m items (strength) replaced by the student's own most likely wrong value for the item's key
    (`corruption_args.wrong_values`: a JSON file or dict key -> value); a key without one (the student was never
    wrong on it) or whose value is already there gets a uniformly random wrong value, counted as `fallback`."""
    table = load_wrong_values(context.get("wrong_values"))
    keys = _keys(context.get("prompt", ""))
    fallback = 0

    def pick(i, got, want, r):
        nonlocal fallback
        v = table.get(keys[i]) if i < len(keys) else None
        if v is None or v == got or v == want:
            fallback += 1
            return _wrong_uniform(got, want, r)
        return v

    out, info = _corrupt_items(text, strength, rng, context, pick)
    return out, {**info, "fallback": fallback}


_WRONG_CACHE: dict[str, dict] = {}


def load_wrong_values(spec) -> dict[str, str]:
    """`wrong_values` as given in corruption_args: a dict, or the path of a JSON object key -> value."""
    if isinstance(spec, dict):
        return spec
    if not spec:
        raise ConfigError("corruption student_wrong_items needs pair.corruption_args.wrong_values: a JSON file "
                          "{key: the student's most likely wrong value} (the lab writes one per run)")
    if spec not in _WRONG_CACHE:
        from deltalearn.io import read_json

        data = read_json(spec)
        if not isinstance(data, dict):
            from deltalearn.io import DataError

            raise DataError(spec, "wrong_values must be a JSON object {key: value}")
        _WRONG_CACHE[spec] = {str(k): str(v) for k, v in data.items()}
    return _WRONG_CACHE[spec]


# ---------------------------------------------------------------------------------------------------------
# Text: sentences and words
# ---------------------------------------------------------------------------------------------------------

_SENT_SEP = re.compile(r"((?<=[.!?])[ \t]+|[ \t]*\n+[ \t]*)")


def split_sentences(text: str) -> tuple[list[str], list[str]]:
    """(pieces, separators): pieces[i] + separators[i] + pieces[i+1] ... rebuilds `text`. A sentence ends at
    '.', '!' or '?' followed by a space, or at a line break (a heading or list item is one 'sentence')."""
    parts = _SENT_SEP.split(text)
    return parts[0::2], parts[1::2]


def _join(pieces: list[str], seps: list[str]) -> str:
    out = [pieces[0]]
    for s, p in zip(seps, pieces[1:]):
        out += [s, p]
    return "".join(out)


def sentences(text: str) -> list[str]:
    """The non-blank sentences of a text, in order."""
    return [p for p in split_sentences(text)[0] if p.strip()]


def drop_sentence(text: str, strength: float, rng: random.Random, context: dict) -> Result:
    """k sentences (strength) removed, chosen at random; at least one sentence must remain."""
    k = int(strength)
    pieces, seps = split_sentences(text)
    real = [i for i, p in enumerate(pieces) if p.strip()]
    if k == 0 or len(real) <= k:
        return text, {"sentences_dropped": 0, "sentences": len(real)}
    drop = set(rng.sample(real, k))
    keep_p, keep_s, between = [], [], []
    for i, p in enumerate(pieces):
        between += seps[i - 1:i]
        if i in drop:
            continue
        if keep_p:  # of the separators around a dropped sentence, keep the line break (a heading stays a line)
            keep_s.append(max(between, key=lambda x: x.count("\n")))
        keep_p.append(p)
        between = []
    out = _join(keep_p, keep_s).strip() if keep_p else ""
    return out, {"sentences_dropped": k, "sentences": len(real)}


def shuffle_sentences(text: str, strength: float, rng: random.Random, context: dict) -> Result:
    """k sentences (strength >= 2) moved: a random k of them trade places so that each lands elsewhere (a
    derangement); the separators (spaces, line breaks) stay where they were."""
    k = int(strength)
    pieces, seps = split_sentences(text)
    real = [i for i, p in enumerate(pieces) if p.strip()]
    if k < 2 or len(real) < k:
        return text, {"sentences_moved": 0, "sentences": len(real)}
    slots = sorted(rng.sample(real, k))
    texts = [pieces[i] for i in slots]
    if len(set(texts)) < 2:  # every chosen sentence reads the same: no order of them changes the text
        return text, {"sentences_moved": 0, "sentences": len(real)}
    while True:  # k >= 2: a random derangement is found in ~e tries
        perm = list(range(k))
        rng.shuffle(perm)
        if all(p != i for i, p in enumerate(perm)):
            break
    out, seps = list(pieces), list(seps)
    for slot, j in zip(slots, perm):
        out[slot] = texts[j]
    for i, sep in enumerate(seps):  # a heading moved before a space would run into the next sentence
        if "\n" not in sep and not re.search(r"[.!?]$", out[i]):
            seps[i] = "\n"
    return _join(out, seps), {"sentences_moved": k, "sentences": len(real)}


def truncate(text: str, strength: float, rng: random.Random, context: dict) -> Result:
    """The answer cut short: the last fraction `strength` (0 <= s < 1) of its words removed (at least one word
    cut, at least one kept); the cut copy is a finished answer (it gets its EOS), not a truncated one."""
    words = list(re.finditer(r"\S+", text))
    n = len(words)
    cut = 0 if strength == 0 else max(1, round(strength * n))
    if cut == 0 or cut >= n:
        return text, {"words_cut": 0, "words": n}
    return text[:words[n - cut - 1].end()], {"words_cut": cut, "words": n}


# ---------------------------------------------------------------------------------------------------------
# Registry, lookup, strength checks
# ---------------------------------------------------------------------------------------------------------

CORRUPTIONS: dict[str, Corruption] = {
    "wrong_items": Corruption(wrong_items, "count", "m items replaced by a uniformly random wrong value"),
    "student_wrong_items": Corruption(student_wrong_items, "count",
                                      "m items replaced by the student's own most likely wrong value"),
    "drop_sentence": Corruption(drop_sentence, "count", "k sentences removed"),
    "shuffle_sentences": Corruption(shuffle_sentences, "count", "k sentences trade places (k >= 2)"),
    "truncate": Corruption(truncate, "fraction", "the last fraction s of the words cut off"),
}


def get_corruption(name: str | None) -> Corruption:
    """A registered corruption, or a user's `module:function` (strength: any number >= 0)."""
    if not name:
        raise ConfigError("rule 'corrupt' needs pair.corruption: one of " + ", ".join(CORRUPTIONS)
                          + ", or module:function")
    if name in CORRUPTIONS:
        return CORRUPTIONS[name]
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except ImportError as e:
            raise ConfigError(f"pair.corruption '{name}': cannot import module '{mod}' ({e})") from None
        except AttributeError:
            raise ConfigError(f"pair.corruption '{name}': module '{mod}' has no '{attr}'") from None
        if not callable(fn):
            raise ConfigError(f"pair.corruption '{name}' is not a function")
        return Corruption(fn, "any", f"user corruption {name}")
    import difflib

    close = difflib.get_close_matches(name, list(CORRUPTIONS), n=1)
    raise ConfigError(f"pair.corruption: unknown corruption '{name}' (have: {', '.join(CORRUPTIONS)}, or "
                      "module:function)" + (f"; did you mean '{close[0]}'?" if close else ""))


def check_strength(name: str, c: Corruption, strength) -> float:
    """The strength as a number, or an error saying what this corruption takes."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise ConfigError(f"pair.strength: {strength!r} is not a finite number (corruption {name})")
    if strength < 0:
        raise ConfigError(f"pair.strength: {strength:g} is negative; 0 is the identity (the zero-delta control)")
    if c.strength == "count" and strength != int(strength):
        raise ConfigError(f"pair.strength: corruption {name} counts ({c.doc}), so its strength is a whole "
                          f"number, got {strength:g}")
    if c.strength == "fraction" and strength >= 1:
        raise ConfigError(f"pair.strength: corruption {name} cuts a fraction of the words (0 <= s < 1; 1 would "
                          f"leave nothing), got {strength:g}")
    if name == "shuffle_sentences" and strength == 1:
        raise ConfigError("pair.strength: shuffle_sentences moves k >= 2 sentences (one sentence cannot trade "
                          "places), got 1; 0 is the identity")
    return float(strength)


def apply(name: str, text: str, strength: float, rng: random.Random, context: dict) -> Result:
    """Run corruption `name` on one text; a user function's bare string becomes (text, {})."""
    c = get_corruption(name)
    if strength == 0:
        return text, {}
    out = c.fn(text, strength, rng, context)
    if isinstance(out, str):
        return out, {}
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str) and isinstance(out[1], dict)):
        raise ConfigError(f"corruption {name} must return the corrupted text, or (text, info dict); got "
                          f"{type(out).__name__}")
    return out
