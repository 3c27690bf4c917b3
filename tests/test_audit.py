"""`deltalearn audit`: each finding on real data (sections pairs built from the repo's own prose, pairs from
`make_pairs`, a tiny real Llama as the student), the bad-input rules, the predicted gain, and the report section."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from conftest import needs_chromium, render_in_chromium
from deltalearn import audit as A
from deltalearn.cli import main
from deltalearn.experiments.sections import with_k_sections
from deltalearn.io import DataError

ROOT = Path(__file__).resolve().parents[1]


def prose() -> list[str]:
    """Real paragraphs of at least 40 words from the repo's README and docs."""
    out = []
    for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for p in re.split(r"\n\s*\n", f.read_text()):
            if len(p.split()) >= 40 and not p.lstrip().startswith(("|", "```", "#")):
                out.append(p.strip())
    return out


def sections_pairs(kc: int, kr: int, *, variant_r: int = 0) -> list[dict]:
    """The sections experiment's pairs (y_kc over y_kr of the same text), as `experiments.sections` builds them."""
    rows = []
    for i, p in enumerate(prose()):
        c, r = with_k_sections(p, kc), with_k_sections(p, kr, variant=variant_r)
        if c and r:
            rows.append({"id": f"p{i}", "prompt": [{"role": "user", "content": f"Explain part {i} of the docs."}],
                         "chosen": [{"role": "assistant", "content": c}],
                         "rejected": [{"role": "assistant", "content": r}],
                         "rule": "columns", "chosen_model": f"{kc}_sections", "rejected_model": f"{kr}_sections"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("kc,kr,variant,verdict", [(3, 2, 0, "positive delta"), (2, 3, 0, "negative delta"),
                                                   (3, 3, 1, "zero delta")])
def test_sections_forward_reversed_tie_named_with_exact_per_pair_difference(tmp_path, kc, kr, variant, verdict):
    rows = sections_pairs(kc, kr, variant_r=variant)
    assert len(rows) >= 10
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    a = A.audit_pairs(path, utility="bold_sections")
    d = a["delta"]
    # every pair's section difference, exactly: one histogram bin at kc - kr holding all pairs
    assert d["histogram"] == [{"lo": float(kc - kr), "hi": float(kc - kr), "count": len(rows)}]
    assert d["stats"]["delta_mean"] == kc - kr and d["stats"]["delta_ci95"] == [kc - kr, kc - kr]
    assert d["verdict"].startswith(verdict)
    md = A.render_markdown(a)
    assert verdict in md and f"| {'0' if kc == kr else f'{kc - kr:+d}'} | {len(rows)} | 100.0% |" in md
    # no pair is one text twice, the tie included: where y_3' would land on y_3's own boundaries (a short
    # answer), with_k_sections cuts it at sentences or words instead
    assert a["health"]["identical"]["count"] == 0
    assert all(r["chosen"] != r["rejected"] for r in rows)
    # the paper's curve is in judge points: a utility delta only predicts a direction, labelled a prediction
    assert a["prediction"]["direction_only"] and "PREDICTION, not a measurement" in md
    assert ("a gain along it is expected" in a["prediction"]["text"]) == (kc > kr)


def _pair(pid, chosen, rejected, prompt="Q?", **extra):
    return {"id": pid, "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], **extra}


def test_health_counts_each_degenerate_kind_and_the_length_bias():
    from deltalearn.pairs import make_pairs
    from deltalearn.recipe import PairConfig

    long = " ".join(f"word{i}" for i in range(40))
    gens = {"a": [{"id": "p0", "prompt": "Q0", "response": "same answer", "truncated": False},
                  {"id": "p1", "prompt": "Q1", "response": long + " extra", "truncated": True},
                  {"id": "p2", "prompt": "Q2", "response": "one two three four five", "truncated": False}],
            "b": [{"id": "p0", "prompt": "Q0", "response": "same answer ", "truncated": False},
                  {"id": "p1", "prompt": "Q1", "response": long, "truncated": False},
                  {"id": "p2", "prompt": "Q2", "response": "six", "truncated": False}]}
    cfg = PairConfig(rule="columns", chosen="a", rejected="b", drop_truncated=False)
    pairs, _ = make_pairs(gens, cfg)  # make_pairs drops identical p0 itself: add it back as a user's set would have it
    pairs = pairs + [_pair("p0", "same answer", "same answer "), _pair("p3", "", "text", prompt="Q1")]
    h = A.health(pairs)
    assert h["identical"]["count"] == 1 and h["identical"]["examples"] == ["p0"]
    assert h["near_identical"]["count"] == 1 and h["near_identical"]["examples"] == ["p1"]  # 40 of 41 words shared
    assert (h["empty_chosen"], h["empty_rejected"]) == (1, 0)
    assert (h["truncated_chosen"], h["truncated_rejected"]) == (1, 0)  # provenance column from make_pairs
    # 'Q1' is the prompt of p1 (as messages) and of p3: one duplicated prompt, two rows
    assert h["duplicated_prompts"] == {"prompts": 1, "rows": 2, "distinct_prompts": 3}
    d = [1, 4, 0, -1]  # word-length differences chosen - rejected of p1, p2, p0, p3
    lb = h["length_bias"]
    assert lb["chosen_longer"] == 0.5 and lb["equal"] == 0.25
    assert lb["r_label"] == pytest.approx((sum(d) / 4) / math.sqrt(sum(x * x for x in d) / 4))


def test_audit_reads_at_a_glance_verdict_first_warnings_as_warnings(tmp_path):
    """Every side cut at the token limit and a strong length bias are warnings under a verdict line, before the
    tables; sections are numbered 1, 2, 3 with no gap when the student's findings were not run."""
    rows = [_pair(f"p{i}", "short " * (2 + i % 3), "a much longer rejected answer " * (3 + i % 4), prompt=f"Q{i}",
                  chosen_truncated=True, rejected_truncated=True) for i in range(12)]
    a = A.audit_pairs(write_jsonl(tmp_path / "pairs.jsonl", rows), utility="response_words")
    md = A.render_markdown(a)
    first_table = md.index("| ")
    assert md.index("**Verdict: ") < md.index("Next step: ") < first_table
    assert "WARNING: 100% of chosen responses were cut at the token limit" in md[:first_table]
    assert "WARNING: 100% of rejected responses were cut" in md[:first_table]
    assert "WARNING: length bias: the chosen side is usually shorter" in md[:first_table]
    assert re.findall(r"\*\*Audit (\d+)\.", md) == ["1", "2", "2", "3"]


def test_bad_input_skips_errors_and_clamps(tmp_path):
    bare = write_jsonl(tmp_path / "bare.jsonl", [_pair("a", "**A**\n**B**", "**A**"), _pair("b", "**A**", "x")])
    a = A.audit_pairs(bare, utility="bold_sections", sample=50, student=None)
    skipped = "\n".join(a["skipped"])
    # no provenance columns: each check that needs them is skipped with one line saying which and why
    assert "truncated sides: the pairs carry no chosen_truncated/rejected_truncated" in skipped
    assert "size-heuristic agreement: the pairs have no chosen_size/rejected_size" in skipped
    assert "weakness: needs --student MODEL" in skipped and "the student's view: needs --student" in skipped
    assert len(a["skipped"]) == len(set(a["skipped"])) == 4
    # a utility that does not apply: an error naming the utility and the missing field
    with pytest.raises(DataError, match=r"bare.jsonl, row 1, field 'reference': utility 'exact_answer' does not"):
        A.audit_pairs(bare, utility="exact_answer")
    # no quality at all: the delta is skipped with the reason, health still runs
    a = A.audit_pairs(bare)
    assert any(s.startswith("the delta: no quality measure") for s in a["skipped"]) and a["health"]["pairs"] == 2
    # a missing side names the file, row and field
    bad = write_jsonl(tmp_path / "bad.jsonl", [_pair("a", "x", "y"), {"id": "b", "prompt": "Q", "chosen": "x"}])
    with pytest.raises(DataError, match=r"bad.jsonl.*row 2.*field 'rejected'"):
        A.read_pairs(bad)
    # --sample larger than the set is clamped and said
    idx, note = A.sample_indices(2, 50)
    assert idx == [0, 1] and note == "--sample 50 is larger than the set (2 pairs): clamped to 2"
    rc = main(["audit", str(bare), "--utility", "bold_sectons"])
    assert rc == 2  # unknown utility: a ConfigError before anything loads


def test_weakness_flags_follow_their_stated_rules():
    # both sides above the student (s = 1; c = 4, r = 3): flagged, chosen-below not
    w = A.weakness([(4.0, 3.0, 1.0), (4.0, 3.0, 1.0), (5.0, 3.0, 1.0)], "q")
    assert w["both_far_above"] and not w["chosen_far_below"]
    assert w["rejected_minus_student"]["mean"] == 2.0 and w["share_both_above_student"] == 1.0
    # chosen far below: the student's lead over chosen (4) exceeds the delta (1)
    w = A.weakness([(2.0, 1.0, 6.0), (2.0, 1.0, 6.0), (3.0, 2.0, 6.0)], "q")
    assert w["chosen_far_below"] and not w["both_far_above"] and w["share_chosen_below_student"] == 1.0
    # chosen a little below, by less than the delta: no flag
    w = A.weakness([(5.0, 1.0, 6.0), (5.0, 1.0, 6.0), (6.0, 2.0, 6.5)], "q")
    assert not w["chosen_far_below"] and not w["both_far_above"]


def test_student_findings_on_a_tiny_real_model(tmp_path, tiny_model_dir):
    import torch

    from deltalearn.logps import pair_logps
    from deltalearn.models import load_model

    rows = sections_pairs(3, 2)[:6]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "audit.json"
    rc = main(["audit", str(path), "--student", tiny_model_dir, "--utility", "bold_sections", "--sample", "4",
               "--max-new-tokens", "8", "--out", str(out), "--no-progress"])
    assert rc == 0
    a = json.loads(out.read_text())
    assert a["sample"] == 4 and a["weakness"]["n"] == 4 and a["student_view"]["n"] == 4
    # the chosen side of every sampled pair has 3 sections: weakness's chosen mean is exactly that
    assert a["weakness"]["chosen_mean"] == 3.0 and a["weakness"]["rejected_mean"] == 2.0
    # the student's view is the student's own per-token log-probs, recomputed here directly
    idx, _ = A.sample_indices(len(rows), 4, 0)
    model, tok = load_model(tiny_model_dir)
    c, r = pair_logps(model, tok, [rows[i] for i in idx], max_len=1024, reduction="mean", precision="fp32")
    assert a["student_view"]["margin_mean"] == pytest.approx(float(torch.mean(c - r)), abs=1e-5)
    assert a["student_view"]["prefers_chosen"] == pytest.approx(float(torch.mean((c > r).float())))
    assert (tmp_path / "audit.md").read_text().startswith("# Audit of")


def test_judge_scores_the_sample_only(tmp_path, tiny_model_dir):
    """--judge runs the real judge path on the sampled pairs; a random tiny model gives no parseable score, so
    every pair is unscored and the delta is skipped with its reason rather than guessed."""
    path = write_jsonl(tmp_path / "pairs.jsonl", sections_pairs(3, 2)[:6])
    a = A.audit_pairs(path, judge=tiny_model_dir, sample=3)
    assert a["quality_scope"] == f"judge {tiny_model_dir} on the 3 sampled pairs"
    assert a["delta"]["stats"]["pairs"] == 3 and a["delta"]["stats"]["scored"] == 0
    assert any(s.startswith("the delta: no quality measure") for s in a["skipped"])
    with pytest.raises(Exception, match="not both"):
        A.audit_pairs(path, judge=tiny_model_dir, utility="bold_sections")


def _hinge(x, knee=0.5):
    return 2.0 * min(x, knee) + 0.1


def test_curve_fit_prediction_band_and_its_labels(tmp_path):
    pts = [{"arm": f"a{i}", "delta": i / 10, "gain": _hinge(i / 10) + (0.01 if i % 2 else -0.01)} for i in range(11)]
    (tmp_path / "results.json").write_text(json.dumps(
        {"experiment": "sweep", "quality": "bold_sections", "metric": "utility/bold_sections", "plots": [],
         "tables": [{"title": "t", "columns": ["arm", "chosen", "rejected", "delta", "gain", "gain se"],
                     "rows": [[p["arm"], "c", "r", p["delta"], p["gain"], 0.1] for p in pts]}]}))
    curve = A.curve_from_results(tmp_path)
    assert curve["points"] == 11 and curve["fit"]["slope_above"] == pytest.approx(0.0, abs=0.05)
    stats = {"scored": 10, "quality": "bold_sections", "delta_mean": 0.3, "delta_ci95": [0.25, 0.35]}
    p = A.predict_gain(curve, stats)
    assert p["label"] == "prediction, not a measurement"
    assert p["gain"] == pytest.approx(_hinge(0.3), abs=0.03) and p["band"][0] < _hinge(0.3) < p["band"][1]
    far = A.predict_gain(curve, {**stats, "delta_mean": 2.0, "delta_ci95": [1.9, 2.1]})
    assert any("extrapolated" in c for c in far["caveats"])
    other = A.predict_gain(curve, {**stats, "quality": "exact_answer"})
    assert other["band"] is None and "not comparable" in other["skipped"]
    # the paper's numbers: a judge delta as a share of the plateau gain (knee 0.55), weakness caveats in words
    paper = A.predict_gain(None, {**stats, "quality": "judge", "delta_mean": 0.275, "delta_ci95": [0.11, 0.9]},
                           {"both_far_above": True, "chosen_far_below": False})
    assert paper["share_of_plateau"] == pytest.approx(0.5) and paper["band"] == [pytest.approx(0.2), 1.0]
    assert "Section 5" in paper["source"] and any("72B" in c for c in paper["caveats"])
    with pytest.raises(DataError, match="no sweep points"):
        A.sweep_points({"tables": []})


def test_report_renders_the_audit_section(tmp_path):
    from deltalearn.report import build_report

    run = tmp_path / "run"
    (run / "pairs").mkdir(parents=True)
    write_jsonl(run / "pairs" / "tie.jsonl", sections_pairs(3, 3, variant_r=1))
    assert main(["audit", str(run / "pairs" / "tie.jsonl"), "--utility", "bold_sections"]) == 0
    assert (run / "pairs" / "audit" / "tie.json").exists()  # default: beside the pairs
    shutil.move(run / "pairs" / "audit", run / "audit")
    page = build_report([run]).read_text()
    assert "Audit of pair set tie (before training)" in page and "zero delta" in page
    assert page.count("<img") == 1  # the delta histogram
    (run / "audit" / "broken.json").write_text("{}")
    assert "not a `deltalearn audit` result" in build_report([run]).read_text()


@needs_chromium
def test_audit_section_renders_in_chromium(tmp_path):
    from deltalearn.report import build_report

    run = tmp_path / "run"
    (run / "audit").mkdir(parents=True)
    path = write_jsonl(tmp_path / "k3-over-k2.jsonl", sections_pairs(3, 2))
    assert main(["audit", str(path), "--utility", "bold_sections", "--out", str(run / "audit" / "k3.json")]) == 0
    dom, total, decoded = render_in_chromium(build_report([run]))
    assert total == decoded == 1 and "Audit 2. Per-pair delta histogram" in dom and "positive delta" in dom


@pytest.mark.slow
@needs_chromium
def test_audit_with_the_embedded_student_renders_in_chromium(tmp_path):
    """Real generations: SmolLM2 answers the sampled prompts; the report's audit plots decode in a browser."""
    from deltalearn.report import build_report

    run = tmp_path / "run"
    (run / "pairs").mkdir(parents=True)
    path = write_jsonl(run / "pairs" / "k3-over-k2.jsonl", sections_pairs(3, 2)[:8])
    assert main(["audit", str(path), "--student", "smollm2-135m", "--utility", "bold_sections", "--sample", "4",
                 "--max-new-tokens", "48", "--out", str(run / "audit" / "k3.json"), "--no-progress"]) == 0
    a = json.loads((run / "audit" / "k3.json").read_text())
    assert a["weakness"]["n"] == 4 and a["student_view"]["n"] == 4
    dom, total, decoded = render_in_chromium(build_report([run]))
    assert total == decoded == 1  # one figure: the delta histogram beside the student's margin histogram
    assert "Audit 3. Weakness" in dom and "Audit 4. The student" in dom

