"""The one CLI: every subcommand has working help, doctor reports the machine, inspect-data shows the boundary."""

import json
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
