"""Every writing command refuses a folder (or file) it did not write, exit 2, nothing touched; writes into new,
empty, or its own artifacts; and a user's file inside an artifact is never deleted (deltalearn.outputs)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deltalearn.cli import main
from deltalearn.outputs import MARKER, claim, read_kind


def user_folder(path: Path) -> dict:
    """A folder of the user's: a note and a subfolder with a file. Returns its snapshot."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    (path / "sub" / "keep.txt").write_text("keep\n")
    return snapshot(path)


def snapshot(path: Path) -> dict:
    """Every file's bytes (the marker a recognised older artifact receives aside)."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))
            if p.name != MARKER}


def refused(capsys, argv, folder, entry="notes.txt"):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(folder) in err and entry in err, err
    return err


@pytest.fixture()
def wide(tmp_path):
    """Two generation columns over three prompts, as a wide table `pair` reads."""
    path = tmp_path / "wide.jsonl"
    rows = [{"prompt": f"q{i}", "a": f"good answer {i}", "b": f"bad {i}"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say {i}"}) + "\n" for i in range(2)))
    return path


# --- one test per command: a user's folder is refused, nothing touched (each wrote or deleted there before) ----


def test_pair_refuses_a_users_folder(tmp_path, wide, capsys):
    """Before: the folder was renamed aside and deleted (notes.txt and sub/ gone), rc 0."""
    d = tmp_path / "mine"
    before = user_folder(d)
    refused(capsys, ["pair", "--generations", str(wide), "--rule", "columns", "--chosen", "a", "--rejected", "b",
                     "--out", str(d)], d)
    assert snapshot(d) == before


def test_pair_refuses_a_run_folder(tmp_path, wide, capsys):
    """`pair --out runs/x` (a run folder) deleted the run's generations, arms and reports."""
    run = tmp_path / "runs" / "x"
    (run / "generations").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    (run / "generations" / "m.jsonl").write_text("")
    before = snapshot(run)
    err = refused(capsys, ["pair", "--generations", str(wide), "--rule", "columns", "--chosen", "a",
                           "--rejected", "b", "--out", str(run)], run, entry="manifest.json")
    assert "run folder" in err and "RUN/pairs" in err
    assert snapshot(run) == before


def test_pair_keeps_user_files_inside_its_own_folder(tmp_path, wide):
    """Rewriting a pairs folder replaces the dataset and keeps a user's file put inside it."""
    d = tmp_path / "pairs"
    argv = ["pair", "--generations", str(wide), "--rule", "columns", "--chosen", "a", "--rejected", "b",
            "--out", str(d)]
    assert main(argv) == 0
    assert read_kind(d) == "pairs" and json.loads((d / MARKER).read_text())["kind"] == "pairs"
    (d / "README.txt").write_text("my notes on these pairs\n")
    assert main(argv + ["--export", "jsonl"]) == 0
    assert (d / "README.txt").read_text() == "my notes on these pairs\n"
    assert (d / "pairs.jsonl").exists() and not (d.parent / ".pairs.old").exists()


def test_train_refuses_a_users_folder(tmp_path, pairs_file, tiny_model_dir, capsys):
    """Before: a foreign model/weights.bin was removed and a foreign metrics.jsonl overwritten."""
    d = tmp_path / "mine"
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.bin").write_bytes(b"\0" * 8)
    (d / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = snapshot(d)
    refused(capsys, ["train", "--pairs", str(pairs_file), "--out", str(d), "--model", tiny_model_dir,
                     "--precision", "fp32", "--no-progress"], d, entry="metrics.jsonl")
    assert snapshot(d) == before


def test_generate_refuses_a_users_folder(tmp_path, prompts_file, capsys):
    """Before: `generate --merge` looked for shard files in the folder and would have written <slug>.jsonl into
    it (a plain generate wrote there too); now the folder is refused first."""
    d = tmp_path / "mine"
    before = user_folder(d)
    err = refused(capsys, ["generate", "--models", "smollm2-135m", "--prompts", str(prompts_file), "--out", str(d),
                           "--merge", "2"], d)
    assert "did not write" in err
    assert snapshot(d) == before


def test_eval_refuses_a_users_folder(tmp_path, prompts_file, tiny_model_dir, capsys):
    """eval writes OUT/eval/<label>.json (+ responses): OUT/eval must be its own. Before: it wrote there."""
    d = tmp_path / "out" / "eval"
    before = user_folder(d)
    refused(capsys, ["eval", "--model", tiny_model_dir, "--prompts", str(prompts_file), "--out", str(d.parent),
                     "--utilities", "response_words", "--max-new-tokens", "2", "--no-progress"], d)
    assert snapshot(d) == before


def test_eval_refuses_to_replace_a_users_json_under_its_label(tmp_path, prompts_file, tiny_model_dir, capsys):
    from deltalearn.evaluate import default_label

    d = tmp_path / "out" / "eval"
    d.mkdir(parents=True)
    (d / "x.responses.jsonl").write_text("")  # an eval folder
    mine = d / f"{default_label(tiny_model_dir)}.json"
    mine.write_text('{"mine": 1}')
    err = refused(capsys, ["eval", "--model", tiny_model_dir, "--prompts", str(prompts_file), "--out",
                           str(d.parent), "--utilities", "response_words", "--no-progress"], mine,
                  entry="not an eval result")
    assert "--label" in err and mine.read_text() == '{"mine": 1}'


def test_default_labels_come_from_the_arm_or_run_folder(tmp_path):
    """Before: every trained model was labelled "model"; two arms collided in one --out."""
    from deltalearn.evaluate import default_label
    from deltalearn.generate import model_slug

    for path, label in ((tmp_path / "runs/x/arms/dpo/model", "dpo"), (tmp_path / "runs/api/train/model", "train")):
        path.mkdir(parents=True)
        assert default_label(str(path)) == label and model_slug(str(path)) == label
    assert default_label("smollm2-135m") == "smollm2-135m"


def test_generate_of_two_trained_models_names_each_by_its_folder(tmp_path, prompts_file, capsys):
    """Before: `generate --models runs/x/arms/dpo/model runs/api/train/model` refused ("would both write
    model.jsonl"); now they are dpo.jsonl and train.jsonl, and a real collision names --label."""
    a, b, c = (tmp_path / "runs/x/arms/dpo/model", tmp_path / "runs/api/train/model",
               tmp_path / "runs/y/arms/dpo/model")
    for p in (a, b, c):
        p.mkdir(parents=True)
    rc = main(["generate", "--models", str(a), str(c), "--prompts", str(prompts_file), "--out",
               str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert rc == 2 and "would both write dpo.jsonl" in err and "--label" in err, err
    from deltalearn.generate import model_slug

    assert {model_slug(str(a)), model_slug(str(b))} == {"dpo", "train"}


def test_eval_refuses_another_models_result_under_the_same_label(tmp_path, prompts_file, tiny_model_dir, capsys):
    """Before: `eval --out D` replaced D/eval/<label>.json holding another model's result."""
    d = tmp_path / "evals"
    (d / "eval").mkdir(parents=True)
    from deltalearn.evaluate import default_label

    other = d / "eval" / f"{default_label(tiny_model_dir)}.json"
    other.write_text(json.dumps({"label": "x", "model": "some/other-model", "metrics": {}}))
    before = snapshot(d)
    err = refused(capsys, ["eval", "--model", tiny_model_dir, "--prompts", str(prompts_file), "--out", str(d),
                           "--utilities", "response_words", "--max-new-tokens", "2", "--no-progress"],
                  other, entry="some/other-model")
    assert "--label" in err
    assert snapshot(d) == before


def test_report_refuses_to_overwrite_a_users_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    mine = tmp_path / "index.html"
    mine.write_text("<html>my page</html>")
    err = refused(capsys, ["report", str(run), "--out", str(mine)], mine, entry="not a deltalearn report")
    assert mine.read_text() == "<html>my page</html>" and not mine.with_suffix(".md").exists(), err


def test_audit_refuses_to_overwrite_a_users_file(tmp_path, pairs_file, capsys):
    mine = tmp_path / "results.json"
    mine.write_text('{"mine": true}')
    refused(capsys, ["audit", str(pairs_file), "--utility", "response_words", "--out", str(mine)], mine,
            entry="not a deltalearn audit")
    assert mine.read_text() == '{"mine": true}' and not mine.with_suffix(".md").exists()


def test_run_refuses_a_users_folder(tmp_path, capsys):
    """Before: the run's manifest.json was written into the user's folder before anything was checked."""
    d = tmp_path / "mine"
    before = user_folder(d)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\noutput_dir: {d}\nprompts:\n  path: {tmp_path / 'absent.jsonl'}\n"
                      "generate:\n  models: [smollm2-135m]\ntrain:\n  model: smollm2-135m\n")
    refused(capsys, ["run", str(recipe)], d)
    assert snapshot(d) == before


def test_lab_refuses_a_users_folder(tmp_path, capsys):
    """Before: the lab wrote its prompt splits and generations into the folder (after building its ladder)."""
    d = tmp_path / "mine"
    before = user_folder(d)
    refused(capsys, ["lab", "--out", str(d), "--no-progress"], d)
    assert snapshot(d) == before


# --- the guard itself -----------------------------------------------------------------------------------------


def test_new_empty_and_own_folders_are_accepted_and_marked(tmp_path):
    assert claim(tmp_path / "new" / "deep", "train").is_dir()
    assert read_kind(tmp_path / "new" / "deep") == "train"
    (tmp_path / "empty").mkdir()
    claim(tmp_path / "empty", "pairs")
    assert read_kind(tmp_path / "empty") == "pairs"
    claim(tmp_path / "empty", "pairs")  # its own kind again


def test_a_rank_that_claims_while_another_writes_the_marker_is_not_refused(tmp_path):
    """Every rank of a launch claims the training folder at once: the temporary file of another rank's marker
    (mark() writes it, then renames it into place) is not a user's file."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / f".{MARKER}.12345.tmp").write_text('{"kind": "tr', encoding="utf-8")  # rank 0, mid-write
    assert claim(folder, "train") == folder
    assert read_kind(folder) == "train"


@pytest.mark.parametrize("kind,files", [("run", ["manifest.json"]), ("train", ["train_config.json", "COMPLETED"]),
                                        ("pairs", ["state.json", "dataset_info.json"]),
                                        ("generations", ["m.jsonl", "m.meta.json"]),
                                        ("eval", ["base.responses.jsonl"])])
def test_artifacts_from_before_markers_are_recognised(tmp_path, kind, files):
    """Runs written before the marker existed resume: recognised by their own files, then marked."""
    d = tmp_path / "old"
    for f in files:
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        (d / f).write_text("{}")
    assert read_kind(d) == kind
    claim(d, kind)
    assert json.loads((d / MARKER).read_text())["kind"] == kind


def test_another_kind_is_refused(tmp_path):
    from deltalearn.outputs import ForeignOutput

    d = tmp_path / "arm"
    claim(d, "train")
    (d / "metrics.jsonl").write_text("")
    with pytest.raises(ForeignOutput, match="deltalearn train folder"):
        claim(d, "pairs")


# --- hostile paths: a file for a folder, a symlink out, a read-only folder, another kind ------------------------


KIND = {"pair": "pairs", "train": "train", "generate": "generations", "eval": "eval", "eval-run": "run",
        "run": "run", "lab": "run"}


def _hostile(tmp_path: Path, case: str, cmd: str) -> Path:
    p = tmp_path / ("eval" if cmd == "eval" else "target")
    if case == "file":
        p.write_text("a file of mine\n")
        return p
    p.mkdir()
    if case == "symlink-out":  # the command's own kind of folder, with an entry leading out of it
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        (outside / "precious.txt").write_text("precious\n")
        (p / MARKER).write_text(json.dumps({"kind": KIND[cmd]}))
        os.symlink(outside, p / "model")
        if cmd == "eval-run":  # a trained arm, so that eval gets as far as writing
            (p / "arms" / "a" / "model").mkdir(parents=True)
            (p / "arms" / "a" / "model" / "config.json").write_text("{}")
    elif case == "other-kind":  # a finished training run (for train itself: a run folder)
        if cmd == "train":
            (p / "manifest.json").write_text("{}")
        else:
            (p / "train_config.json").write_text("{}")
            (p / "COMPLETED").write_text("ok\n")
    else:  # an empty, read-only folder
        p.chmod(0o555)
    return p


def _argv(cmd: str, p: Path, tmp: Path, wide: Path, pairs: Path, prompts: Path) -> list[str]:
    recipe = tmp / "r.yaml"
    recipe.write_text(f"name: r\noutput_dir: {p}\nprompts:\n  path: {tmp / 'absent.jsonl'}\n"
                      "generate:\n  models: [smollm2-135m]\ntrain:\n  model: smollm2-135m\n")
    if cmd == "eval":  # eval writes OUT/eval: the hostile target is that folder
        p = p.parent
    return {
        "pair": ["pair", "--generations", str(wide), "--rule", "columns", "--chosen", "a", "--rejected", "b",
                 "--out", str(p)],
        "train": ["train", "--pairs", str(pairs), "--out", str(p), "--model", "smollm2-135m"],
        "generate": ["generate", "--models", "smollm2-135m", "--prompts", str(prompts), "--out", str(p),
                     "--merge", "1"],
        "eval": ["eval", "--model", "smollm2-135m", "--prompts", str(prompts), "--out", str(p)],
        "eval-run": ["eval", "--run", str(p), "--prompts", str(prompts), "--base", "smollm2-135m"],
        "run": ["run", str(recipe)],
        "lab": ["lab", "--out", str(p)],
    }[cmd]


@pytest.mark.parametrize("case", ["file", "symlink-out", "other-kind", "read-only"])
@pytest.mark.parametrize("cmd", ["pair", "train", "generate", "eval", "eval-run", "run", "lab"])
def test_hostile_output_paths_are_refused_and_nothing_is_lost(tmp_path, wide, pairs_file, prompts_file, capsys,
                                                              cmd, case):
    p = _hostile(tmp_path, case, cmd)
    if case == "read-only" and os.access(p, os.W_OK):
        pytest.skip("running as root: a chmod 555 folder is still writable, so it is not read-only to this test")
    argv = _argv(cmd, p, tmp_path, wide, pairs_file, prompts_file)
    before = snapshot(tmp_path) if p.is_dir() else None
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(p) in err, err
    if case == "symlink-out":
        assert (tmp_path / "elsewhere" / "precious.txt").read_text() == "precious\n"
        assert "symlink" in err, err
    if case == "file":
        assert p.read_text() == "a file of mine\n" and ("is a file" in err or "not a folder" in err
                                                          or "not found" in err), err
    if before is not None:
        assert snapshot(tmp_path) == before


def test_hostile_report_and_audit_paths(tmp_path, pairs_file, capsys):
    d = tmp_path / "a-folder"
    d.mkdir()
    assert main(["report", str(tmp_path), "--out", str(d)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["audit", str(pairs_file), "--utility", "response_words", "--out", str(d)]) == 2
    assert "is a folder" in capsys.readouterr().err
    outside = tmp_path / "precious.html"
    outside.write_text("precious")
    os.symlink(outside, tmp_path / "link.html")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "link.html")]) == 2
    assert outside.read_text() == "precious"


def test_read_only_folder_as_root_is_reported_honestly(tmp_path):
    """As root, chmod cannot make a folder read-only; an immutable folder (chattr +i) can, where supported: then the
    guard's first write (the marker) fails and names the folder, before any work."""
    from deltalearn.outputs import ForeignOutput

    if os.geteuid() != 0:
        pytest.skip("covered by the chmod case of the sweep")
    d = tmp_path / "ro"
    d.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        with pytest.raises(ForeignOutput, match="cannot write there"):
            claim(d, "pairs")
    finally:
        subprocess.run(["chattr", "-i", str(d)])


def test_a_sections_arm_folder_is_a_train_artifact(tmp_path):
    """The sections experiment writes an arm's fingerprint (and pairs) into the folder train() then trains into;
    train's guard must take that folder as its own (make demo failed at its habit stage when it did not)."""
    from deltalearn.experiments.sections import _check_arm_dir

    arm = tmp_path / "arms" / "habit"
    _check_arm_dir(arm, {"lr": 1e-4})
    (arm / "pairs.jsonl").write_text("{}\n", encoding="utf-8")
    assert claim(arm, "train") == arm
    older = tmp_path / "arms" / "older"  # an arm folder from before markers: fingerprint and pairs, no marker
    older.mkdir()
    (older / "sections_arm.json").write_text('{"lr": 0.0001}\n', encoding="utf-8")
    (older / "pairs.jsonl").write_text("{}\n", encoding="utf-8")
    _check_arm_dir(older, {"lr": 1e-4})
    assert claim(older, "train") == older
