"""Recipes are validated before any work starts, with errors a person can act on."""

import json
import warnings

import pytest

from deltalearn.recipe import ConfigError, Recipe, arm_configs, load_recipe, parse_override


def test_defaults_and_loss_specific_beta_after_overrides():
    r = load_recipe(data={"train": {"model": "m", "loss": "dpo"}})
    assert r.train.beta == 0.1
    r = load_recipe(data={"train": {"model": "m", "loss": "dpo"}}, overrides=["train.loss=dpo_norm"])
    assert r.train.beta == 5.0  # not DPO's 0.1 kept by accident
    r = load_recipe(data={"train": {"model": "m", "loss": "dpo_norm", "beta": 10}})
    assert r.train.beta == 10.0


def test_dpo_scale_beta_with_length_normalized_loss_warns():
    with pytest.warns(UserWarning, match="need a beta around 2-10"):
        load_recipe(data={"train": {"model": "m", "loss": "dpo_norm", "beta": 0.1}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_recipe(data={"train": {"model": "m", "loss": "dpo", "beta": 0.1}})


def test_unknown_key_has_did_you_mean(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  model: m\n  learning_rate: 1e-6\n")
    with pytest.raises(ConfigError, match=r"r.yaml: unknown key 'train.learning_rate'") as e:
        load_recipe(p)
    p.write_text("train:\n  model: m\n  betta: 5\n")
    with pytest.raises(ConfigError, match="did you mean 'beta'"):
        load_recipe(p)


def test_type_and_choice_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"train.loss: 'dpo_nrom' is not one of .*did you mean 'dpo_norm'"):
        load_recipe(data={"train": {"model": "m", "loss": "dpo_nrom"}})
    with pytest.raises(ConfigError, match=r"train.batch_size: expected a whole number, got 'lots'"):
        load_recipe(data={"train": {"model": "m", "batch_size": "lots"}})
    with pytest.raises(ConfigError, match=r"train: batch_size \(6\) must be a multiple of micro_batch_size \(4\)"):
        load_recipe(data={"train": {"model": "m", "batch_size": 6, "micro_batch_size": 4}})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        load_recipe(data={"train": {"model": "m", "lr": 0}})


def test_yaml_scientific_notation_is_a_number(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  model: m\n  lr: 5e-7\n")  # PyYAML reads this as a string
    assert load_recipe(p).train.lr == pytest.approx(5e-7)


def test_overrides_parse_yaml_values():
    assert parse_override("train.adam_betas=[0.9, 0.99]") == (["train", "adam_betas"], [0.9, 0.99])
    r = load_recipe(data={"train": {"model": "m"}}, overrides=["train.adam_betas=[0.9, 0.99]", "seed=3"])
    assert r.train.adam_betas == (0.9, 0.99) and r.seed == 3
    with pytest.raises(ConfigError, match=r"^--set train.beta: expected KEY=VALUE, e.g. --set train.beta=5$"):
        parse_override("train.beta")  # the same `--set TEXT:` prefix as every other override error


def test_arms_merge_and_get_their_own_loss_defaults():
    r = load_recipe(data={"train": {"model": "m", "loss": "dpo_norm", "lr": 1e-5},
                          "arms": [{"name": "dpo"}, {"name": "sft", "train": {"loss": "sft", "lr": 2e-5}},
                                   {"name": "rev", "pair": {"control": "reverse"}}]})
    pair, train = arm_configs(r, r.arms[1])
    assert train.loss == "sft" and train.lr == 2e-5 and train.beta == 0.0
    pair, train = arm_configs(r, r.arms[2])
    assert pair.control == "reverse" and train.beta == 5.0
    with pytest.raises(ConfigError, match="duplicate arm names"):
        load_recipe(data={"arms": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match=r"unknown key 'arms\[0\].train.lrr'; did you mean 'lr'"):
        load_recipe(data={"train": {"model": "m"}, "arms": [{"name": "a", "train": {"lrr": 1}}]})


def test_missing_recipe_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(p)
    assert isinstance(load_recipe(), Recipe)


def test_set_errors_name_the_set_and_experiment_errors_name_the_file(tmp_path, capsys):
    """A bad value from --set blames the --set, not the recipe file; an empty value says so instead of 'got None';
    an experiment-key typo in the file names the file (issue 17)."""
    from deltalearn.cli import main

    demo = "recipes/sections-demo.yaml"
    with pytest.raises(ConfigError, match=r"^--set train.lr=abc: train.lr: expected a number, got 'abc'$"):
        load_recipe(demo, ["train.lr=abc"])
    with pytest.raises(ConfigError, match=r"^--set train.lr=: no value after '='"):
        load_recipe(demo, ["train.lr="])
    in_file = _write(tmp_path, "lr: abc", demo)
    with pytest.raises(ConfigError, match=f"^{in_file}: train.lr: expected a number, got 'abc'$"):
        load_recipe(in_file, [])
    bad = _write(tmp_path, "habitk: 6", demo)
    assert main(["run", bad, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: unknown key 'experiment.habitk'; did you mean 'habit_k'?" in err
    assert main(["run", demo, "--dry-run", "--set", "experiment.habitk=6"]) == 2
    assert "--set experiment.habitk=6: unknown key 'experiment.habitk'" in capsys.readouterr().err


def _write(tmp_path, line: str, demo: str) -> str:
    """The demo recipe with one extra line under train: (lr) or experiment: (anything else)."""
    import yaml

    data = yaml.safe_load(open(demo))
    key, value = line.split(": ")
    (data["train"] if key == "lr" else data["experiment"])[key] = value if key == "lr" else int(value)
    out = tmp_path / f"{key}.yaml"
    out.write_text(yaml.safe_dump(data))
    return str(out)


def test_config_reference_is_current_and_complete():
    """docs/config.md is generated from the dataclasses (python -m deltalearn.configdoc > docs/config.md); every
    recipe field has a docstring, and every train.* key it lists is one --set accepts."""
    import dataclasses
    from pathlib import Path

    from deltalearn import configdoc
    from deltalearn import recipe as R

    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    assert doc == configdoc.render(), "docs/config.md is stale: python -m deltalearn.configdoc > docs/config.md"
    for cls in (R.PromptsConfig, R.GenerateConfig, R.PairConfig, R.TrainConfig, R.LoraConfig, R.EvalConfig, R.Arm,
                R.Recipe):
        nested = {"prompts", "generate", "pair", "train", "eval", "arms"} if cls is R.Recipe else set()
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in nested
                   and f.name not in configdoc.field_docs(cls)]
        assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"
    from deltalearn.experiments.sections import SectionsSettings
    from deltalearn.lab.experiments import LabSettings

    for cls in (SectionsSettings, LabSettings):  # the experiment.* keys, documented in the same file
        missing = [f.name for f in dataclasses.fields(cls) if f.name != "ladder"
                   and f.name not in configdoc.field_docs(cls)]
        assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"
    for f in dataclasses.fields(R.TrainConfig):
        assert f"| `train.{f.name}` |" in doc
        if f.name not in ("lora", "model", "reference"):
            value = getattr(R.TrainConfig(), f.name)
            text = "null" if value is None else json.dumps(list(value) if isinstance(value, tuple) else value)
            load_recipe(data={"train": {"model": "m"}}, overrides=[f"train.{f.name}={text}"])
