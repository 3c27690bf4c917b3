"""`deltalearn run RECIPE --dry-run` fails on whatever the run would fail on after generating or training:
pairing against the generation sets the recipe produces, arms' overrides, eval files and lm-eval tasks, the output
folder. Each case here dry-ran with rc 0 before (deltalearn.dryrun)."""

import pytest

from deltalearn.cli import main

MAIN = "recipes/tulu3-8b-qwen2.5-3b-over-1.5b.yaml"


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\noutput_dir: {tmp_path / 'runs' / 'r'}\nprompts:\n  path: builtin:sections_prompts\n"
                    + text)
    return str(path)


def dry(capsys, *argv):
    rc = main(["run", *argv, "--dry-run"])
    return rc, capsys.readouterr().err


def test_columns_rule_naming_a_set_the_recipe_does_not_generate(tmp_path, capsys):
    """Failed only after generating: 'pairing needs at least two generation sets'."""
    r = write(tmp_path, "generate:\n  models: [smollm2-135m]\npair:\n  rule: columns\n  chosen: smollm2-135m\n"
                        "  rejected: smollm2-135m-t1.2\ntrain:\n  model: smollm2-135m\n")
    rc, err = dry(capsys, r)
    assert rc == 2, err
    assert "needs at least two generation sets" in err and "'smollm2-135m-t1.2' is not among generate.models" in err
    assert main(["run", r]) == 2  # the real run stops there too, before generating
    assert not (tmp_path / "runs" / "r" / "generations").exists()


def test_wrong_case_of_a_generated_model_is_caught_with_a_did_you_mean(capsys):
    rc, err = dry(capsys, MAIN, "--set", "pair.chosen=Qwen/Qwen2.5-3B-instruct")
    assert rc == 2, err
    assert "did you mean 'Qwen/Qwen2.5-3B-Instruct'" in err and "rule=columns" in err


def test_columns_rule_with_a_wrong_case(capsys):
    rc, err = dry(capsys, MAIN, "--set", "pair.rule=columns", "--set", "pair.chosen=Qwen/Qwen2.5-3B-instruct",
                  "--set", "pair.rejected=Qwen/Qwen2.5-1.5B-Instruct")
    assert rc == 2 and "did you mean 'Qwen/Qwen2.5-3B-Instruct'" in err, err


def test_an_arms_pair_override_is_checked(tmp_path, capsys):
    r = write(tmp_path, "generate:\n  models: [a-model, b-model]\npair:\n  rule: columns\n  chosen: a-model\n"
                        "  rejected: b-model\ntrain:\n  model: smollm2-135m\narms:\n  - name: ok\n"
                        "  - name: reversed\n    pair: {chosen: b-model, rejected: a-modle}\n")
    rc, err = dry(capsys, r)
    assert rc == 2, err
    assert "arm reversed: pair.rejected: 'a-modle'" in err and "did you mean 'a-model'" in err
    assert "arm ok" not in err


def test_eval_files(tmp_path, capsys):
    r = write(tmp_path, "generate:\n  models: [a-model, b-model]\npair:\n  rule: ladder\n"
                        "  sizes: {a-model: 2, b-model: 1}\ntrain:\n  model: smollm2-135m\n"
                        f"eval:\n  pairs: {tmp_path / 'absent.jsonl'}\n  prompts: {{path: {tmp_path / 'no.jsonl'}}}\n")
    rc, err = dry(capsys, r)
    assert rc == 2, err
    assert "eval.pairs: " in err and "absent.jsonl not found" in err and "no.jsonl not found" in err


@pytest.mark.slow  # an unknown name is confirmed by lm-eval's own task index: ~20 s of CPU
def test_lm_eval_task_names(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    r = write(tmp_path, "generate:\n  models: [a-model, b-model]\npair:\n  rule: ladder\n"
                        "  sizes: {a-model: 2, b-model: 1}\ntrain:\n  model: smollm2-135m\n"
                        "eval:\n  lm_eval_tasks: [gsm8k, gsm8k_cott]\n")
    rc, err = dry(capsys, r)
    assert rc == 2, err
    assert "'gsm8k_cott' is not an lm-eval task" in err and "'gsm8k' is not" not in err


def test_unknown_lm_eval_preset(tmp_path, capsys):
    r = write(tmp_path, "generate:\n  models: [a-model, b-model]\npair:\n  rule: ladder\n"
                        "  sizes: {a-model: 2, b-model: 1}\ntrain:\n  model: smollm2-135m\n"
                        "eval:\n  lm_eval_tasks: ['preset:tulu3-devv']\n")
    rc, err = dry(capsys, r)
    assert rc == 2 and "unknown lm-eval preset 'tulu3-devv'" in err, err


def test_output_folder_that_is_not_a_run_folder(tmp_path, capsys):
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "notes.txt").write_text("mine")
    r = write(tmp_path, "generate:\n  models: [a-model, b-model]\npair:\n  rule: ladder\n"
                        "  sizes: {a-model: 2, b-model: 1}\ntrain:\n  model: smollm2-135m\n")
    rc, err = dry(capsys, r)
    assert rc == 2 and "notes.txt" in err, err
    assert not (tmp_path / "runs" / "r" / ".deltalearn-artifact").exists()  # a dry run writes nothing


def test_a_good_recipe_still_dry_runs(capsys):
    rc, err = dry(capsys, MAIN)
    assert rc == 0, err
