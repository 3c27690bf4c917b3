"""The checks of a pipeline recipe that need no model's outputs, run by `deltalearn run` (and its --dry-run)
before any stage: whatever would fail after hours of generation or training fails here, at once.

- pairing, per arm (its overrides applied), against the generation sets the recipe will produce: their labels are
  `generate.models` as written, so a rule's chosen / rejected / student / weaker must name one of them exactly
  (a wrong case is caught, with a did-you-mean), and a rule needs at least two sets;
- the arms' training settings resolve; every arm has a model to tune;
- eval: local prompt and pair files exist, utilities are known, lm-eval presets and task names exist (task names
  when lm-eval is installed);
- output folders: the run folder may be written (deltalearn.outputs), without writing it.
"""

from __future__ import annotations

from pathlib import Path

from deltalearn.recipe import Arm, ConfigError, Recipe, arm_configs

_RULE_KEYS = {"columns": ("chosen", "rejected"), "self_vs_weaker": ("student", "weaker")}


def check_recipe(recipe: Recipe) -> None:
    """Raise one ConfigError listing every problem found; nothing is loaded or written."""
    errs = recipe_problems(recipe)
    if errs:
        raise ConfigError(f"recipe '{recipe.name}': " + "; ".join(errs))


def recipe_problems(recipe: Recipe) -> list[str]:
    if recipe.kind not in ("pipeline", "sweep"):
        return []
    errs: list[str] = []
    labels = list(dict.fromkeys(recipe.generate.models))
    for arm in recipe.arms or [Arm(name="main")]:
        where = f"arm {arm.name}: " if recipe.arms else ""
        try:
            pair_cfg, train_cfg = arm_configs(recipe, arm)
        except ConfigError as e:
            errs.append(f"{where}{e}")
            continue
        errs += [f"{where}{e}" for e in pairing_problems(pair_cfg, labels)]
        if train_cfg.model is None:
            errs.append(f"{where}train.model: the model to tune is not set")
    errs += eval_problems(recipe)
    errs += output_problems(recipe)
    return list(dict.fromkeys(errs))


def pairing_problems(pair_cfg, labels: list[str]) -> list[str]:
    """The rule's named sets against the labels the generate stage will produce."""
    from deltalearn.pairs import _label

    errs = []
    if len(labels) < 2:
        errs.append(f"pair.rule={pair_cfg.rule} needs at least two generation sets, but generate.models gives "
                    f"{labels}: add the models whose responses are paired (e.g. a second, sampled run of a model "
                    "is a set of its own only via `deltalearn generate --label`, not in one recipe)")
    for key in _RULE_KEYS.get(pair_cfg.rule, ()):
        name = getattr(pair_cfg, key)
        if name is None and pair_cfg.rule == "self_vs_weaker" and key == "weaker" and len(labels) == 2:
            continue  # the one other set
        try:
            _label(name, labels, key)
        except ConfigError as e:
            errs.append(str(e).replace("is not a generation set", "is not among generate.models"))
    for rule, names in _RULE_KEYS.items():  # a set named for another rule is ignored by this one: say so
        for key in names:
            if rule != pair_cfg.rule and getattr(pair_cfg, key) is not None:
                errs.append(f"pair.{key} is used only by rule={rule}, and this rule is {pair_cfg.rule}: remove it or "
                            f"set pair.rule={rule}")
                try:
                    _label(getattr(pair_cfg, key), labels, key)
                except ConfigError as e:
                    errs.append(str(e).replace("is not a generation set", "is not among generate.models"))
    for name in pair_cfg.sizes:
        if name not in labels:
            try:
                _label(name, labels, "sizes")
            except ConfigError as e:
                errs.append(str(e).replace("is not a generation set", "is not among generate.models"))
    keys = _RULE_KEYS.get(pair_cfg.rule)
    if keys and all(getattr(pair_cfg, k) for k in keys) and getattr(pair_cfg, keys[0]) == getattr(pair_cfg, keys[1]):
        errs.append(f"pair.{keys[0]} and pair.{keys[1]} are the same set '{getattr(pair_cfg, keys[0])}'")
    if pair_cfg.rule == "utility" and pair_cfg.utility:
        from deltalearn.utility import get_utility

        try:
            get_utility(pair_cfg.utility)
        except ConfigError as e:
            errs.append(f"pair.utility: {e}")
    return errs


def eval_problems(recipe: Recipe) -> list[str]:
    ev = recipe.eval
    errs = []
    for what, path in (("eval.prompts.path", ev.prompts.path if ev.prompts else None), ("eval.pairs", ev.pairs)):
        if path and not str(path).startswith("builtin:") and "://" not in str(path) and not Path(path).exists():
            errs.append(f"{what}: {path} not found")
    if ev.lm_eval_tasks:
        errs += lm_eval_problems(list(ev.lm_eval_tasks))
    return errs


def lm_eval_problems(tasks: list[str]) -> list[str]:
    from deltalearn.lmeval import expand_tasks

    try:
        names, _ = expand_tasks(tasks)
    except ConfigError as e:
        return [f"eval.lm_eval_tasks: {e}"]
    names = [t for t in names if not t.startswith("local:")]
    try:
        import lm_eval
    except ImportError:
        return []  # not installed: the eval stage says so itself (task names unchecked here)
    known = _declared_task_names(Path(lm_eval.__file__).parent / "tasks")
    if all(t in known for t in names):
        return []
    from lm_eval.tasks import TaskManager  # the authority, but slow to index: only when a name is not found above

    known = set(TaskManager().all_tasks)
    import difflib

    errs = []
    for t in names:
        if t not in known:
            close = difflib.get_close_matches(t, sorted(known), n=1)
            errs.append(f"eval.lm_eval_tasks: '{t}' is not an lm-eval task" + (f"; did you mean '{close[0]}'?"
                                                                               if close else ""))
    return errs


def _declared_task_names(root: Path) -> set[str]:
    """Task, group and tag names (and list items) declared in lm-eval's task YAMLs: a quick superset scan."""
    import re

    pat = re.compile(r"^\s*(?:-\s*|(?:task|group|tag)\s*:\s*)([A-Za-z0-9_.\-]+)\s*$", re.M)
    names: set[str] = set()
    for f in root.rglob("*.yaml"):
        names.update(pat.findall(f.read_text(encoding="utf-8", errors="replace")))
    return names


def output_problems(recipe: Recipe) -> list[str]:
    from deltalearn.outputs import ForeignOutput, claim

    try:
        claim(recipe.run_dir, "run", flag="output_dir", write=False)
    except ForeignOutput as e:
        return [str(e)]
    return []
