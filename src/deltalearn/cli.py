"""The one `deltalearn` command. Each subcommand lives in the module that does the work: that module defines
`add_cli_args(parser)` and `run_cli(args) -> int`, and is imported only when its subcommand runs, so
`deltalearn --help` stays fast and light.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from deltalearn.cliargs import add_no_progress, positive_int  # noqa: F401 - shared with the stages

# name -> (module, one-line help). The order is the pipeline's order.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("deltalearn.experiments.sections", "the quick bold-sections experiment on the embedded SmolLM2 (~10 min CPU)"),
    "run": ("deltalearn.runner", "run a whole recipe YAML: generate -> pair -> train -> eval -> report"),
    "generate": ("deltalearn.generate", "greedy (or sampled) responses from one or more models, resumable"),
    "pair": ("deltalearn.pairs", "turn generations into preference pairs by a stated rule; --stats for delta statistics"),
    "audit": ("deltalearn.audit", "what a pair set will teach, before training: health, delta, weakness, predicted gain"),
    "train": ("deltalearn.train", "preference-tune (dpo, dpo_norm, simpo, ipo) or SFT a model on pairs"),
    "eval": ("deltalearn.evaluate", "evaluate a model or run: utilities, preference accuracy, judge win rate, lm-eval"),
    "report": ("deltalearn.report", "HTML + Markdown report over one or more run folders"),
    "sweep": ("deltalearn.sweep", "expand a model ladder into every chosen>rejected pair and run each"),
    "lab": ("deltalearn.lab.cli", "the tiny lab: train a model ladder from scratch and run the paper's experiments"),
    "theory": ("deltalearn.theory", "the logistic-regression delta-learning simulator (paper Section 6)"),
    "inspect-data": ("deltalearn.tokenize", "show which tokens of a pair are trained (prompt/response boundary)"),
    "doctor": ("deltalearn.doctor", "versions, device, threads, and which optional extras are installed"),
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the help already states it or there is none to state."""

    def _get_help_string(self, action):
        text = action.help or ""
        # `is`, not `in (None, False, ...)`: 0 == False, and a default of 0 (a seed, a margin) is worth showing.
        none = action.default is None or action.default is False or action.default == [] \
            or action.default is argparse.SUPPRESS
        if "default" in text or none or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    try:
        return pkg_version("deltalearn")
    except PackageNotFoundError:
        return "unknown (not installed)"


_BAR_SWITCHES = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


@contextlib.contextmanager
def _quiet_progress():
    """--no-progress: silence every tqdm bar in this process (transformers' `Loading weights`, `Writing model
    shards`, datasets' and the hub's bars too), not only ours -- for this command only: an in-process caller gets
    its environment and transformers' switch back afterwards."""
    import os

    saved = {key: os.environ.get(key) for key in _BAR_SWITCHES}
    hf_logging = None
    # Read when tqdm / transformers / datasets are imported, so this runs before the subcommand's module loads.
    for key in _BAR_SWITCHES:
        os.environ[key] = "1"
    if "transformers" in sys.modules:  # already imported (an in-process caller): switch its bars off directly
        from transformers.utils import logging as hf_logging
    hf_was_on = hf_logging.is_progress_bar_enabled() if hf_logging else False
    if hf_logging:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if hf_was_on:
            hf_logging.enable_progress_bar()


def _short_warnings(command: str) -> None:
    """Our own warnings (e.g. a DPO-scale beta with dpo_norm) print as one line of advice, not as a UserWarning
    with a source path; other libraries' warnings keep Python's format."""
    import warnings
    from pathlib import Path

    package = str(Path(__file__).parent)
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(package):
            print(f"deltalearn {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="deltalearn",
        description="Delta learning: preference tuning on pairs of weak responses.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"deltalearn {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, description=help_)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Output into a closed pipe (`deltalearn doctor | head -3`) ends it quietly with 141
    (128 + SIGPIPE, as `yes | head` does), for every subcommand, instead of a BrokenPipeError traceback."""
    try:
        rc = _main(argv)
        sys.stdout.flush()  # a buffered tail hits the closed pipe here, inside the handler, not at interpreter exit
        return rc
    except BrokenPipeError:
        _stdout_to_devnull()
        return 141


def _stdout_to_devnull() -> None:
    """After a broken pipe, point stdout at /dev/null so Python's final flush of what is still buffered does not
    print `Exception ignored ... BrokenPipeError` on the way out."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (an in-process caller's capture): nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, sub = build_parser()
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.parse_args(argv)  # prints argparse's own "invalid choice" error and exits 2
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    with _quiet_progress() if "--no-progress" in argv[1:] else contextlib.nullcontext():
        return _run_subcommand(name, argv[1:])


def _run_subcommand(name: str, argv: list[str]) -> int:
    module = importlib.import_module(SUBCOMMANDS[name][0])
    p = argparse.ArgumentParser(prog=f"deltalearn {name}", description=SUBCOMMANDS[name][1],
                                formatter_class=DefaultsHelpFormatter)
    module.add_cli_args(p)
    args = p.parse_args(argv)
    from deltalearn.io import DataError
    from deltalearn.recipe import ConfigError

    import warnings

    showwarning = warnings.showwarning
    _short_warnings(name)
    try:
        return int(module.run_cli(args) or 0)
    except (DataError, ConfigError) as e:
        print(f"deltalearn {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\ndeltalearn {name}: {_interrupted(name, e)}", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    finally:
        warnings.showwarning = showwarning


def _interrupted(name: str, e: KeyboardInterrupt) -> str:
    """What a rerun will do. Training says itself when it saved a checkpoint on the signal; stopped anywhere else
    (a second Ctrl-C, or before the first step), only checkpoints saved earlier (train.save_every) survive."""
    if str(e):
        return str(e)
    if name in ("train", "run", "lab", "demo", "sweep"):
        return ("interrupted before a checkpoint could be saved: a rerun of the same command resumes training from "
                "the newest checkpoint saved earlier (train.save_every), or restarts the arm from step 0 if none "
                "was; finished stages are kept")
    return "interrupted; rerun the same command to resume."


if __name__ == "__main__":
    sys.exit(main())
