"""Utilities mu(x, y): measurable response quality, used both to build data and to evaluate (one definition).

- `bold_sections(y)`: the paper's stylistic utility (Section 3, Experiment 1): the number of Markdown bold
  section headers, i.e. lines whose whole content is a bold span such as `**Header**` or `__Header__`
  (optionally after `#` marks or a list marker, optionally ending in a colon). Bold words inside a sentence,
  unclosed `**`, and empty bold spans do not count.
- `bold_spans(y)`: every closed bold span anywhere (to see "emit ** everywhere" degeneration).
- `distinct_headers(y)`: header lines with distinct text (to see repetition loops).
- `exact_answer(y, reference)`: 1.0 when the response's final answer equals the reference.

Each takes (response, reference=None) and returns a float; `UTILITIES` names them for recipes.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

# A header line: optional heading hashes or list marker, then one bold span, then an optional colon.
_HEADER = re.compile(
    r"""^\s*(?:\#{1,6}\s+|(?:[-*+]|\d+[.)])\s+)?   # optional '## ' or '- ' / '1. '
        (?:\*\*(?P<a>[^*\n]*?\S[^*\n]*?)\*\*|__(?P<b>[^_\n]*?\S[^_\n]*?)__)   # **text** or __text__
        \s*:?\s*$""",
    re.VERBOSE,
)
_SPAN = re.compile(r"\*\*(?=\S)([^*\n]+?)(?<=\S)\*\*|__(?=\S)([^_\n]+?)(?<=\S)__")


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


def response_words(response: str, reference: Optional[str] = None) -> float:
    return float(len((response or "").split()))


UTILITIES: dict[str, Callable[..., float]] = {
    "bold_sections": bold_sections,
    "bold_spans": bold_spans,
    "distinct_headers": distinct_headers,
    "exact_answer": exact_answer,
    "response_words": response_words,
}


def get_utility(name: str) -> Callable[..., float]:
    if name not in UTILITIES:
        import difflib

        from deltalearn.recipe import ConfigError

        close = difflib.get_close_matches(name, list(UTILITIES), n=1)
        raise ConfigError(f"unknown utility '{name}'" + (f"; did you mean '{close[0]}'?" if close else
                                                          f"; known: {', '.join(UTILITIES)}"))
    return UTILITIES[name]
