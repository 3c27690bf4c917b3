"""The one `deltalearn` command. Each subcommand lives in the module that does the work: that module defines
`add_cli_args(parser)` and `run_cli(args) -> int`, and is imported only when its subcommand runs, so
`deltalearn --help` stays fast and light.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). The order is the pipeline's order.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("deltalearn.experiments.sections", "the quick bold-sections experiment on the embedded SmolLM2 (~10 min CPU)"),
    "run": ("deltalearn.runner", "run a whole recipe YAML: generate -> pair -> train -> eval -> report"),
    "generate": ("deltalearn.generate", "greedy (or sampled) responses from one or more models, resumable"),
    "pair": ("deltalearn.pairs", "turn generations into preference pairs by a stated rule; --stats for delta statistics"),
    "train": ("deltalearn.train", "preference-tune (dpo, dpo_norm, simpo, ipo) or SFT a model on pairs"),
    "eval": ("deltalearn.evaluate", "evaluate a model or run: utilities, preference accuracy, judge win rate, lm-eval"),
    "report": ("deltalearn.report", "HTML + Markdown report over one or more run folders"),
    "sweep": ("deltalearn.sweep", "expand a model ladder into every chosen>rejected pair and run each"),
    "lab": ("deltalearn.lab.cli", "the tiny lab: train a model ladder from scratch and run the paper's experiments"),
    "theory": ("deltalearn.theory", "the logistic-regression delta-learning simulator (paper Section 6)"),
    "inspect-data": ("deltalearn.tokenize", "show which tokens of a pair are trained (prompt/response boundary)"),
    "doctor": ("deltalearn.doctor", "versions, device, threads, and which optional extras are installed"),
}


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="deltalearn",
        description="Delta learning: preference tuning on pairs of weak responses.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, description=help_)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, sub = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.parse_args(argv)  # prints argparse's own "invalid choice" error and exits 2
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module = importlib.import_module(SUBCOMMANDS[name][0])
    p = argparse.ArgumentParser(prog=f"deltalearn {name}", description=SUBCOMMANDS[name][1])
    module.add_cli_args(p)
    args = p.parse_args(argv[1:])
    from deltalearn.io import DataError
    from deltalearn.recipe import ConfigError

    try:
        return int(module.run_cli(args) or 0)
    except (DataError, ConfigError) as e:
        print(f"deltalearn {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ndeltalearn {name}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
