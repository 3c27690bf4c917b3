"""The one CLI: every subcommand has working help, doctor reports the machine, inspect-data shows the boundary."""

import json
import os
import subprocess
import sys

import pytest

from deltalearn.cli import SUBCOMMANDS, main


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "deltalearn.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_top_level_help_lists_every_subcommand(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help(name):
    """Imports the subcommand's module and builds its parser: catches broken imports and argument clashes."""
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0


def test_unknown_subcommand_is_an_error():
    r = run("trian")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_doctor_json():
    r = run("doctor", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["versions"]["torch"] and info["precision_auto"] in ("bf16", "fp32")
    assert info["extras"]["gguf"] is True  # installed by the dev extra


def test_inspect_data_shows_masked_and_trained_tokens(tmp_path, toy_pairs, smollm2_dir):
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs[:1]))
    r = run("inspect-data", str(p), "--rows", "1")
    assert r.returncode == 0, r.stderr
    assert "[masked" in r.stdout and "[trained" in r.stdout and "**|Paris" in r.stdout.replace("** |", "**|")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"\n')
    r = run("inspect-data", str(bad))
    assert r.returncode == 2 and "bad.jsonl, row 2: not valid JSON" in r.stderr


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("deltalearn ")


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_flag_has_help_and_shows_its_default(name, capsys):
    """One consistent CLI (issue 17): every flag says what it does, and a flag with a default shows it."""
    import argparse
    import importlib

    from deltalearn.cli import DefaultsHelpFormatter

    p = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    importlib.import_module(SUBCOMMANDS[name][0]).add_cli_args(p)
    fmt = DefaultsHelpFormatter("x")
    for a in p._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        text = fmt._get_help_string(a) % {"default": a.default}
        assert a.help, f"{name} {a.option_strings or a.dest}: no help text"
        # `is`: a default of 0 (a seed) is a default to show, though 0 == False
        if a.option_strings and not (a.default is None or a.default is False or a.default == []):
            assert "default" in text, f"{name} {a.option_strings[0]}: default {a.default!r} not shown"
            assert f"({a.default}) (default" not in text, f"{name} {a.option_strings[0]}: default shown twice"
            assert "(default: (" not in text and "(default: [" not in text, \
                f"{name} {a.option_strings[0]}: default shown as a Python repr, not as the flag takes it: {text}"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_limit_below_one_is_refused_at_once(value, tmp_path):
    r = run("generate", "--models", "smollm2-135m", "--prompts", "builtin:sections_prompts", "--limit", value,
            "--out", str(tmp_path))
    assert r.returncode == 2 and "--limit: must be at least 1" in r.stderr


def test_one_name_for_one_thing():
    """--model works on generate as elsewhere; train takes --precision/--seed like generate; inspect-data takes
    --pairs like train; theory's count is --n-pairs (its old --pairs still works)."""
    import argparse
    import importlib

    def parser(name):
        p = argparse.ArgumentParser()
        importlib.import_module(SUBCOMMANDS[name][0]).add_cli_args(p)
        return p

    assert parser("generate").parse_args(["--model", "a", "--prompts", "p", "--out", "o"]).models == ["a"]
    t = parser("train").parse_args(["--pairs", "p", "--out", "o", "--precision", "fp32", "--seed", "3"])
    assert (t.precision, t.seed) == ("fp32", 3)
    assert parser("inspect-data").parse_args(["--pairs", "p"]).pairs == "p"
    assert parser("theory").parse_args(["--n-pairs", "7"]).pairs == parser("theory").parse_args(["--pairs", "7"]).pairs == 7
    e = parser("eval").parse_args(["--model", "m", "--id-column", "id", "--split", "eval"])
    assert (e.id_column, e.split) == ("id", "eval")


def test_no_progress_silences_transformers_bars(tmp_path, tiny_model_dir, capfd, monkeypatch):
    """--no-progress: no bar at all on stderr, transformers' `Loading weights` / `Writing model shards` included
    (in process, so the check sees the switch work after transformers is already imported)."""
    from transformers.utils import logging as hf_logging

    from conftest import toy_pair_rows

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in toy_pair_rows()))
    args = ["train", "--pairs", str(pairs), "--model", tiny_model_dir, "--loss", "sft", "--set", "train.max_steps=1",
            "--set", "train.batch_size=4", "--set", "train.micro_batch_size=4", "--precision", "fp32"]
    for key in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(key, raising=False)  # restored after the test: --no-progress sets them
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    assert main([*args, "--out", str(tmp_path / "loud")]) == 0
    assert "it/s" in capfd.readouterr().err  # the bars exist without the flag
    try:
        assert main([*args, "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
        err = capfd.readouterr().err
        assert "Loading weights" not in err and "Writing model shards" not in err and "it/s" not in err, err
        # for that command only: the caller's environment and transformers' switch are as they were
        assert not {k for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
                    if k in os.environ}
        assert hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


def test_our_warnings_print_as_a_message():
    """The DPO-scale-beta advice prints as one `deltalearn run: warning: ...` line, not a UserWarning with a
    source path and a code excerpt."""
    r = run("run", "recipes/sections-demo.yaml", "--dry-run", "--set", "train.beta=0.1")
    assert r.returncode == 0, r.stderr
    assert "deltalearn run: warning: train.beta=0.1 with loss=dpo_norm" in r.stderr
    assert "UserWarning" not in r.stderr and "recipe.py" not in r.stderr


def test_output_into_a_closed_pipe_ends_quietly():
    """`deltalearn doctor | head -3`: the reader is gone before the output is; that ends the command quietly
    (rc 141 = 128 + SIGPIPE, as `yes | head`), not with a BrokenPipeError traceback. Handled once in the entry point,
    so it holds for every subcommand."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has exited: every write gets EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", "deltalearn.cli", "doctor"], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert r.returncode == 141 and r.stderr == "", r.stderr


@pytest.mark.parametrize("setting, message", [
    ("generate.max_new_tokens=5", "--set generate.max_new_tokens=5: `deltalearn train` reads only train.* keys"),
    ("lr=1", "--set lr=1: `deltalearn train` reads only train.* keys (the other sections are for `deltalearn run`); "
             "did you mean train.lr?"),
])
def test_train_refuses_a_set_it_would_ignore(setting, message, tmp_path, capsys):
    """train uses the recipe's train section only: another section's key was accepted and did nothing."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert main(["train", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"deltalearn train: error: {message}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
