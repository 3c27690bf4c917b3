"""Utilities mu(x, y): measurable response quality, used both to build data and to evaluate (one definition).

- `bold_sections(y)`: the paper's stylistic utility (Section 3, Experiment 1): the number of Markdown bold
  section-header *lines*. A line is a header when its whole content is one bold span, `**Header**` or
  `__Header__`, optionally after heading marks (`## `) or a list marker (`- `, `1. `), optionally followed by a
  colon. As in Markdown, the bold text must not start or end with a space (`** x **` is not bold), and it may
  not contain the marker character, so bold-italic `***x***` and two spans on one line do not count.
  Not headers: bold words inside a sentence (`Use **salt** here`), a bold lead-in followed by text on the same
  line (`1. **Prepare**: wash the pan` -- SmolLM2's usual list style), unclosed `**`, empty `****`, and
  Markdown `#` headings without bold. Empty or missing text scores 0.
- `bold_spans(y)`: every closed bold span anywhere, headers included (to see "emit ** everywhere" degeneration,
  which a header-line count scores as a *decrease*; see shared/sections-notes.md).
- `distinct_headers(y)`: header lines with distinct text, case-insensitive (to see repetition loops such as
  `**Immediately**` repeated).
- `exact_answer(y, reference)`: 1.0 when the response's final answer equals the reference.
- `item_accuracy(y, reference)`: the fraction of the reference's comma-separated items that the response has,
  exactly, at the same position (a graded utility for responses made of many independent items, e.g. the tiny
  lab's `lookups` task: `374=6,512=3` against `374=6,512=4` scores 0.5). Extra items in the response earn nothing.
- `response_words(y)`: words (whitespace-separated); `sentences(y)`: non-blank sentences, split as the sentence
  corruptions split them (at . ! ? and line breaks), so a dropped sentence is one fewer.
- `repeated_ngrams(y)`: the share of the response's word 4-grams that repeat an earlier 4-gram of it (0 for a
  text with no repeats or under 5 words; "I'm not a helpful AI. I'm not a helpful AI. ..." approaches 1): a cheap
  sign of a degenerate, looping answer.

Each takes (response, reference=None) and returns a float; `UTILITIES` names them for recipes.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

# A header line: optional heading hashes or list marker, then one bold span, then an optional colon.
# The span's text starts and ends with a non-space (CommonMark's flanking rule, simplified).
_HEADER = re.compile(
    r"""^\s*(?:\#{1,6}\s+|(?:[-*+]|\d+[.)])\s+)?           # optional '## ' or '- ' / '1. '
        (?:\*\*(?P<a>(?=\S)[^*\n]*[^*\s])\*\*|__(?P<b>(?=\S)[^_\n]*[^_\s])__)   # **text** or __text__
        \s*:?\s*$""",
    re.VERBOSE,
)
_SPAN = re.compile(r"\*\*(?=[^*\s])([^*\n]*?[^*\s])\*\*|__(?=[^_\s])([^_\n]*?[^_\s])__")


def header_lines(response: str) -> list[str]:
    """The text of every bold section-header line, in order."""
    out = []
    for line in (response or "").splitlines():
        m = _HEADER.match(line)
        if m:
            out.append((m.group("a") or m.group("b")).strip())
    return out


def bold_sections(response: str, reference: Optional[str] = None) -> float:
    return float(len(header_lines(response)))


def bold_spans(response: str, reference: Optional[str] = None) -> float:
    return float(len(_SPAN.findall(response or "")))


def distinct_headers(response: str, reference: Optional[str] = None) -> float:
    return float(len({h.lower() for h in header_lines(response)}))


_ANSWER = re.compile(r"answer\s*[:=]?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(response: str) -> Optional[str]:
    """The last 'Answer: N' in the response, else its last number."""
    m = _ANSWER.findall(response or "")
    if m:
        return m[-1]
    nums = _NUMBER.findall(response or "")
    return nums[-1] if nums else None


def exact_answer(response: str, reference: Optional[str] = None) -> float:
    if reference is None:
        raise ValueError("exact_answer needs a reference answer for each prompt")
    got = final_answer(response)
    return float(got is not None and got.strip() == str(reference).strip())


def item_scores(response: str, reference: Optional[str] = None) -> list[int]:
    """1 or 0 for each comma-separated item of the reference: is the response's item at that position the same?"""
    if reference is None:
        raise ValueError("item_accuracy needs a reference (the correct items, comma-separated) for each prompt")
    got = [x.strip() for x in (response or "").split(",")]
    return [int(i < len(got) and got[i] == want.strip()) for i, want in enumerate(str(reference).split(","))]


def item_accuracy(response: str, reference: Optional[str] = None) -> float:
    s = item_scores(response, reference)
    return sum(s) / len(s)


def response_words(response: str, reference: Optional[str] = None) -> float:
    return float(len((response or "").split()))


def sentences(response: str, reference: Optional[str] = None) -> float:
    from deltalearn.corruptions import sentences as split  # one sentence rule for corrupting and measuring

    return float(len(split(response or "")))


def repeated_ngrams(response: str, reference: Optional[str] = None, n: int = 4) -> float:
    words = (response or "").lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


UTILITIES: dict[str, Callable[..., float]] = {
    "bold_sections": bold_sections,
    "bold_spans": bold_spans,
    "distinct_headers": distinct_headers,
    "exact_answer": exact_answer,
    "item_accuracy": item_accuracy,
    "response_words": response_words,
    "sentences": sentences,
    "repeated_ngrams": repeated_ngrams,
}


def get_utility(name: str) -> Callable[..., float]:
    if name not in UTILITIES:
        import difflib

        from deltalearn.recipe import ConfigError

        close = difflib.get_close_matches(name, list(UTILITIES), n=1)
        raise ConfigError(f"unknown utility '{name}'" + (f"; did you mean '{close[0]}'?" if close else
                                                          f"; known: {', '.join(UTILITIES)}"))
    return UTILITIES[name]
