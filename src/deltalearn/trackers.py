"""Experiment trackers (`train.log_with`, through accelerate): checked before any work, and named after the run.

accelerate only warns when a tracker named in `log_with` is not installed and then logs nowhere, so a run the
user meant to watch in W&B or TensorBoard finished with no logs. Here a missing tracker refuses the run up front.
"""

from __future__ import annotations

from pathlib import Path

from deltalearn.recipe import ConfigError

# The pip name of each accelerate tracker where it differs from the tracker's name.
PIP_NAMES = {"comet_ml": "comet-ml"}


def check_trackers(log_with: list[str]) -> None:
    """Every tracker named must be one accelerate knows and be importable; else a ConfigError saying what to do."""
    from accelerate.utils import LoggerType
    import accelerate.utils.imports as imports

    known = [t.value for t in LoggerType if t.value != "all"]
    for name in log_with:
        if name not in known:
            raise ConfigError(f"train.log_with: unknown tracker '{name}' (accelerate knows: {', '.join(known)})")
        available = getattr(imports, f"is_{name}_available", None)
        if available is not None and not available():
            raise ConfigError(f"train.log_with names '{name}', which is not installed: pip install "
                              f"{PIP_NAMES.get(name, name)} (or drop it from train.log_with; metrics.jsonl is "
                              "always written)")


def tracker_names(out: Path, project: str | None, run_name: str | None) -> tuple[str, str]:
    """(project, run name). A recipe's arm trains into runs/NAME/arms/ARM: project NAME, run ARM; a plain
    `deltalearn train --out DIR`: project and run both DIR's name. Set values win."""
    out = Path(out)
    if out.parent.name == "arms" and out.parent.parent.name:
        default_project, default_run = out.parent.parent.name, out.name
    else:
        default_project = default_run = out.resolve().name
    return project or default_project, run_name or default_run


def init_kwargs(log_with: list[str], run_name: str) -> dict:
    """Per-tracker init arguments that carry the run's name (accelerate's init_trackers passes them through)."""
    kwargs = {}
    if "wandb" in log_with:
        kwargs["wandb"] = {"name": run_name}
    if "mlflow" in log_with:
        kwargs["mlflow"] = {"run_name": run_name}
    return kwargs
