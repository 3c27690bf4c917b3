"""The report: one self-contained HTML page + Markdown over run folders; bad artifacts are named, not invented.

Fixtures are synthetic but valid run folders in the documented layout (docs/architecture.md), so the renderer's
own behaviour is tested without a training run; the Chromium test checks that tables and images really render.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import needs_chromium, render_in_chromium
from deltalearn.cli import main
from deltalearn.io import DataError
from deltalearn.report import build_report, gain, load_run, provenance, render


def _metrics_rows(n: int, sign: float) -> str:
    rows = []
    for s in range(1, n + 1):
        m = sign * 0.05 * s
        rows.append({"step": s, "loss": 0.693 - 0.02 * s * sign, "rewards/margin": m, "rewards/accuracy": 0.5 + sign * 0.04 * s,
                     "rewards/chosen": m / 2, "rewards/rejected": -m / 2, "lr": 1e-6, "tokens_per_s": 100.0})
    return "".join(json.dumps(r) + "\n" for r in rows)


def _eval(label: str, scores: list[float], model: str) -> dict:
    n = len(scores)
    m = sum(scores) / n
    se = (sum((x - m) ** 2 for x in scores) / (n - 1) / n) ** 0.5
    ids = [f"p{i}" for i in range(n)]
    return {"label": label, "model": model, "evaluator": {"name": "deltalearn.evaluate", "version": "1"},
            "settings": {"max_new_tokens": 64}, "metrics": {"utility/bold_sections": {"mean": m, "se": se, "n": n}},
            "items": {"ids": {"utility/bold_sections": ids}, "scores": {"utility/bold_sections": scores}}}


def make_run(root: Path, name: str = "demo", *, complete: bool = True) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    recipe = {"name": name, "kind": "pipeline", "prompts": {"path": "builtin:sections_prompts"},
              "generate": {"models": ["smollm2-135m"]}, "pair": {"rule": "utility", "utility": "bold_sections"},
              "train": {"model": "smollm2-135m", "loss": "dpo_norm", "beta": 5, "lr": 2e-5, "batch_size": 8},
              "arms": [{"name": "dpo"}, {"name": "reversed"}]}
    (run / "manifest.json").write_text(json.dumps({"name": name, "recipe": recipe, "git_sha": "abc1234", "seed": 0,
                                                   "delta_stats": {"pairs": 64, "mean_delta": 1.0}}))
    for arm, sign in (("dpo", 1.0), ("reversed", -1.0)):
        d = run / "arms" / arm
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text(_metrics_rows(8, sign))
        (d / "train_summary.json").write_text(json.dumps({"steps": 8, "wall_s": 12.5, "tokens_per_s": 100.0}))
        if complete or arm == "dpo":
            (d / "COMPLETED").write_text("ok\n")
    base = [2, 3, 2, 4, 3, 2, 3, 3]
    (run / "eval" / "base.json").write_text(json.dumps(_eval("base", base, "smollm2-135m")))
    (run / "eval" / "dpo.json").write_text(json.dumps(_eval("dpo", [b + 2 + (i % 2) for i, b in enumerate(base)],
                                                            "runs/demo/arms/dpo/model")))
    (run / "eval" / "reversed.json").write_text(json.dumps(_eval("reversed", [max(0, b - 2) for b in base],
                                                                 "runs/demo/arms/reversed/model")))
    return run


def make_sweep(root: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = root / "sweep"
    run.mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(run / "custom.png")
    plt.close(fig)
    rows = [["3b>1.5b", 0.4, 1.2, 0.3], ["7b>0.5b", 0.9, 2.0, 0.4], ["1.5b>0.5b", 0.2, 0.5, 0.3]]
    (run / "results.json").write_text(json.dumps({
        "experiment": "ladder sweep",
        "tables": [{"title": "Gain vs delta", "columns": ["pair", "delta", "gain", "gain_se"], "rows": rows,
                    "note": "synthetic"}],
        "plots": [{"title": "Custom plot", "path": "custom.png"}]}))
    return run


def test_gain_is_paired_over_shared_items():
    base = _eval("base", [1.0, 2.0, 3.0, 4.0], "m")
    after = _eval("a", [2.0, 3.0, 4.0, 6.0], "m")
    g = gain(base, after, "utility/bold_sections")
    assert g["paired"] and g["gain"] == pytest.approx(1.25) and g["se"] == pytest.approx(0.25)
    # Without per-item scores: unpaired, se from the two standard errors.
    del base["items"], after["items"]
    g = gain(base, after, "utility/bold_sections")
    assert not g["paired"] and g["se"] > 0.25


def test_report_html_and_markdown(tmp_path):
    run = make_run(tmp_path)
    out = build_report([run])
    page = out.read_text()
    md = out.with_suffix(".md").read_text()
    assert out == run / "report.html"
    assert page.count("<img") == 2  # training curves + base/arms bars
    assert "data:image/png;base64," in page and "http" not in page.split("<body>")[1].split("<script>")[0]
    assert "| utility/bold_sections |" in md and "(paired)" in md
    # at the precision the s.e. allows, signed gains, as `deltalearn eval` prints them (was 2.5 ± 0.189)
    assert "| 2.75 ± 0.25 |" in md and "| +2.50 ± 0.19 (paired) |" in md
    assert "abc1234" in page and "mean delta" in page and "mean_delta" not in page
    assert "complete" in md


def test_report_reads_at_a_glance(tmp_path):
    """The verdict and next step come first, warnings are warnings (every answer of an arm cut at the token limit),
    stored keys read as words with shares as percentages, and a few sample answers per model are shown."""
    run = make_run(tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    m["delta_stats"] = {"quality": "bold_sections", "pairs": 64, "scored": 64, "unscored": 0, "delta_mean": 1.0,
                        "delta_se": 0.123456, "delta_ci95": [0.758, 1.242], "positive": 0.875, "zero": 0.125,
                        "negative": 0.0}
    (run / "manifest.json").write_text(json.dumps(m))
    (run / "pairs").mkdir()
    (run / "pairs" / "pair_summary.json").write_text(json.dumps({"rule": "utility", "dropped": {"no_tie": 3}}))
    rev = json.loads((run / "eval" / "reversed.json").read_text())
    rev["metrics"]["truncated"] = {"mean": 1.0, "se": 0.0, "n": 8}
    (run / "eval" / "reversed.json").write_text(json.dumps(rev))
    for lab in ("base", "dpo", "reversed"):
        (run / "eval" / f"{lab}.responses.jsonl").write_text("".join(
            json.dumps({"id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
                        "response": f"**{lab}** answer {i}", "truncated": lab == "reversed"}) + "\n"
            for i in range(5)))
    page = build_report([run]).read_text()
    md = (run / "report.md").read_text()
    run_part = page.split("<h2>", 1)[1]
    assert run_part.index("Verdict: 1 warning sign") < run_part.index("<table")
    assert "Next step:" in run_part and "Warning: every eval answer of reversed (8) was cut" in page
    for raw in ("delta_se", "dropped.no_tie", "0.123456", "0.875"):
        assert raw not in page, raw
    assert "delta standard error" in page and "0.123" in page and "87.5%" in page
    assert "dropped: no equally good partner (tie control)" in page
    assert "Sample answers" in page and "Question 2?" in page and "Question 3?" not in page
    assert "**dpo** answer 0" in md and "(cut at the token limit)" in md


def test_incomplete_and_corrupt_runs_are_marked_not_invented(tmp_path):
    run = make_run(tmp_path, "half", complete=False)
    (run / "eval" / "dpo.json").write_text("{not json")
    (run / "arms" / "dpo" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n{"step": 2, "lo')  # torn tail
    r = load_run(run)
    assert r.status == "incomplete"
    text = "\n".join(r.problems)
    assert "arms/reversed: training did not finish" in text
    assert "eval/dpo.json: not valid JSON" in text
    assert "arms/dpo/metrics.jsonl" in text and "incomplete" in text
    page, md = render([r])
    assert "dpo" not in [row.split("|")[1].strip() for row in md.splitlines() if row.startswith("| utility")]
    assert "Problems" in page and "eval/dpo.json" in md


def test_bad_results_json_names_the_field(tmp_path):
    run = make_sweep(tmp_path)
    (run / "results.json").write_text(json.dumps({"tables": [{"title": "t", "columns": ["a", "b"], "rows": [[1]]}]}))
    r = load_run(run)
    assert any("results.json" in p and "tables[0].rows[0]" in p for p in r.problems)


def test_missing_plot_is_a_problem(tmp_path):
    run = make_sweep(tmp_path)
    (run / "custom.png").unlink()
    page, _ = render([load_run(run)])
    assert "custom.png: plot named in results.json is missing" in page


def test_missing_run_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="nope: run folder not found"):
        build_report([tmp_path / "nope"])


def test_cli_prints_markdown_and_strict_fails_on_problems(tmp_path, capsys):
    good, half = make_run(tmp_path, "good"), make_run(tmp_path, "half", complete=False)
    out = tmp_path / "r.html"
    assert main(["report", str(good), str(half), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "| good | complete |" in stdout and "| half | incomplete |" in stdout
    assert main(["report", str(half), "--out", str(out), "--strict"]) == 1


@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path):
    runs = [make_run(tmp_path, "demo"), make_sweep(tmp_path), make_run(tmp_path, "half", complete=False)]
    out = build_report(runs, tmp_path / "report.html")
    n_img = out.read_text().count("<img")
    assert n_img == 2 + 2 + 2  # demo: curves + bars; sweep: scatter + custom plot; half: curves + bars
    dom, total, decoded = render_in_chromium(out)
    assert total == decoded == n_img  # every embedded PNG decoded (naturalWidth > 0)
    assert dom.count("<table") >= 8 and "utility/bold_sections" in dom and "Gain vs delta" in dom


def test_gain_vs_delta_scatter_recognizes_sweep_tables():
    from deltalearn.report import scatter_png

    sweep = {"title": "s", "columns": ["arm", "chosen", "rejected", "delta", "gain", "gain se"],
             "rows": [["a>b", "a", "b", 0.5, 1.0, 0.2], ["a>c", "a", "c", 0.9, 1.5, 0.3]]}
    # 'mean ± se' cells, and 'base' in a column name is not the word 'se'
    lab = {"title": "l", "columns": ["pair", "delta (pts)", "gain vs base (pts, paired)"],
           "rows": [["r4>r3", "10.0 ± 1.0", "+2.50 ± 0.80"], ["r5>r3", "20.0 ± 1.0", "+4.00 ± 0.90"]]}
    for t in (sweep, lab):
        assert scatter_png(t).startswith(b"\x89PNG")
    assert scatter_png({"title": "n", "columns": ["quantity", "value"], "rows": [["a", 1], ["b", 2]]}) is None
    assert scatter_png({**sweep, "rows": sweep["rows"][:1]}) is None  # one point is not a trend


def test_a_run_built_command_by_command_is_not_called_complete(tmp_path, capsys):
    """No manifest (the quickstart's generate/pair/train/eval): rule and student come from the pair set's and arms'
    own records, the run is marked no-manifest, not complete, and --strict fails on it (issue 17 item 6)."""
    run = make_run(tmp_path, "cli")
    (run / "manifest.json").unlink()
    (run / "pairs").mkdir()
    (run / "pairs" / "pair_summary.json").write_text(json.dumps({"rule": "columns", "control": "none", "pairs": 8}))
    for arm in ("dpo", "reversed"):
        (run / "arms" / arm / "train_config.json").write_text(json.dumps(
            {"model": "smollm2-135m", "loss": "dpo_norm", "beta": 5.0, "lr": 2e-5, "batch_size": 8,
             "pairs_source": "runs/x/pairs"}))
    r = load_run(run)
    assert r.status == "no-manifest" and not r.problems
    prov = dict(provenance(r))
    assert prov["pair rule"] == "columns" and prov["student"] == "smollm2-135m"
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert "| cli | no-manifest | columns | smollm2-135m |" in capsys.readouterr().out
    assert main(["report", str(run), "--out", str(out), "--strict"]) == 1
    assert "manifest.json: not found" in capsys.readouterr().err


def test_report_and_json_files_get_ordinary_permissions(tmp_path):
    """report.html, report.md and every JSON artifact are readable like any other file (0644 under umask 022),
    not 0600 as mkstemp makes them (issue 17)."""
    import os

    from deltalearn.io import write_json_atomic

    old = os.umask(0o022)
    try:
        out = build_report([make_run(tmp_path)])
        write_json_atomic(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    for f in (out, out.with_suffix(".md"), tmp_path / "x.json"):
        assert oct(f.stat().st_mode & 0o777) == oct(0o644), f
