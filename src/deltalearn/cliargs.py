"""argparse helpers shared by every subcommand's module. A leaf module: stages import it, never `deltalearn.cli`
(the CLI is orchestration, and stages never import orchestration: tests/test_imports.py)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type for counts such as --limit: a whole number >= 1 (0 and -1 are mistakes, not 'all')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value} (leave the flag out to use all)")
    return value


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (ours, and transformers' / datasets' loading and saving bars)")
