"""The logistic-regression simulator (paper Section 6): analytic pieces against Monte Carlo and finite differences,
the span-reduced SGD against full d-dimensional SGD, the delta-learning effect itself, bad input and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deltalearn import theory as th
from deltalearn.theory.geometry import _noise_ratio
from deltalearn.recipe import ConfigError

ACC_80_70_60 = th.make_targets(0.8, 0.7, 0.6, "accuracy")


def test_expected_label_gradient_is_u_over_sqrt_2pi():
    rng = np.random.default_rng(0)
    d, n = 5, 400_000
    u = th.unit_rows(rng.standard_normal(d))
    x = rng.standard_normal((n, d))
    g = (x @ u >= 0)[:, None] * x
    se = g.std(0) / math.sqrt(n)
    np.testing.assert_array_less(np.abs(g.mean(0) - th.expected_label_gradient(u)), 5 * se)
    # and so the preference step's expectation is (u_c - u_r)/sqrt(2 pi): the delta direction v
    assert np.allclose(th.expected_label_gradient(u), u / math.sqrt(2 * math.pi))


def test_accuracy_cosine_map():
    assert th.accuracy_from_cosine(1.0) == pytest.approx(1.0)
    assert th.accuracy_from_cosine(0.0) == pytest.approx(0.5)
    assert th.accuracy_from_cosine(-1.0) == pytest.approx(0.0)
    assert th.cosine_from_accuracy(0.75) == pytest.approx(math.sqrt(0.5))
    acc = np.linspace(0, 1, 11)
    np.testing.assert_allclose(th.accuracy_from_cosine(th.cosine_from_accuracy(acc)), acc, atol=1e-12)
    # the map is the real sign-agreement rate for Gaussian inputs
    rng = np.random.default_rng(1)
    d, star = 6, np.eye(6)[0]
    theta = th.with_cosine(star, 0.3, np.eye(6)[1])
    x = rng.standard_normal((200_000, d))
    agree = np.mean((x @ theta >= 0) == (x @ star >= 0))
    assert agree == pytest.approx(th.accuracy_from_cosine(0.3), abs=0.004)
    assert (ACC_80_70_60.alpha0, ACC_80_70_60.alpha_c) == pytest.approx((math.cos(0.2 * math.pi), math.cos(0.3 * math.pi)))


def test_draws_have_exact_cosines_and_orthogonal_errors():
    draws = th.make_draws(50, 20, ACC_80_70_60, np.random.default_rng(2))
    for vecs, a in ((draws.student, draws.alpha0), (draws.chosen, draws.alpha_c), (draws.rejected, draws.alpha_r)):
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0)
        np.testing.assert_allclose(vecs @ draws.theta_star, a)
    np.testing.assert_allclose(draws.e0 @ draws.theta_star, 0.0, atol=1e-12)


def test_c1_kappa_is_the_ray_derivative_checked_by_finite_differences():
    rng = np.random.default_rng(3)
    draws = th.make_draws(20, 200, ACC_80_70_60, rng)
    c1 = th.c1_terms(draws)
    v = draws.chosen - draws.rejected
    np.testing.assert_allclose(c1.signal, (draws.alpha_c - draws.alpha_r) * (1 - draws.alpha0**2))
    np.testing.assert_allclose(th.ray_derivative(draws.student, v, draws.theta_star), c1.kappa, atol=1e-12)
    h = 1e-6
    fd = (th.cos_along_ray(draws.student, v, draws.theta_star, h) - th.cos_along_ray(draws.student, v, draws.theta_star, -h)) / (2 * h)
    np.testing.assert_allclose(fd, c1.kappa, atol=1e-8)
    assert (c1.kappa > 0).any() and (c1.kappa < 0).any()  # d=20: both signs occur, so the check covers both
    # a student of norm 3: f'(0) = kappa / 3, same sign
    big = 3.0 * draws.student
    fd3 = (th.cos_along_ray(big, v, draws.theta_star, h) - th.cos_along_ray(big, v, draws.theta_star, -h)) / (2 * h)
    np.testing.assert_allclose(fd3, c1.kappa / 3, atol=1e-8)
    np.testing.assert_allclose(th.ray_derivative(big, v, draws.theta_star), c1.kappa / 3, atol=1e-12)


def test_ray_optimum_matches_a_grid_search():
    draws = th.make_draws(30, 40, ACC_80_70_60, np.random.default_rng(4))
    v = draws.chosen - draws.rejected
    g, b, c = v @ draws.theta_star, np.sum(v * draws.student, 1), np.sum(v * v, 1)
    lam, gain = th.ray_optimum(draws.alpha0, g, b, c)
    grid = np.linspace(0, 2, 4001)
    f = np.stack([th.cos_along_ray(draws.student[i], v[i], draws.theta_star, grid) for i in range(draws.n)])
    np.testing.assert_allclose(gain, np.maximum(f.max(1), draws.alpha0) - draws.alpha0, atol=1e-6)
    kappa = th.c1_terms(draws).kappa
    assert np.all((lam > 0) == (kappa > 0)) and np.all(gain[kappa <= 0] == 0)


def test_overlap_law_matches_the_vector_construction():
    rng = np.random.default_rng(5)
    for d in (3, 20):
        n = 20_000
        draws = th.make_draws(d, n, ACC_80_70_60, rng)
        p_vec = np.mean(th.c1_terms(draws).kappa > 0)
        p_law = th.c1_fraction(d, ACC_80_70_60, n, rng)
        assert abs(p_vec - p_law) < 5 * math.sqrt(0.25 * 2 / n), (d, p_vec, p_law)
    assert th.c1_fraction(2000, ACC_80_70_60, 20_000, rng) == pytest.approx(th.c1_fraction_normal(2000, ACC_80_70_60), abs=0.01)


def test_smallest_d_for_90_percent_is_near_the_normal_approximation():
    t = ACC_80_70_60
    m, l2, _ = _noise_ratio(t)
    d_normal = 1 + (1.2815516 * l2 / m) ** 2
    d_exact = th.smallest_d_c1(t, n=50_000)
    assert 0.8 * d_normal < d_exact < 1.25 * d_normal
    assert d_exact < th.SLIDES_D  # the slides' 2000 is a sufficient bound, well above the true rate


@pytest.mark.parametrize("d", [3, 30])
def test_span_reduced_sgd_matches_full_sgd_in_distribution(d):
    rng = np.random.default_rng(6)
    n, steps, batch, lr = 400, 8, 64, 0.3
    draws = th.make_draws(d, n, ACC_80_70_60, rng)
    full = th.sgd_arms(draws, np.full(steps, lr), batch, rng, arms=("preference",))["preference"]
    red = th.sgd_preference(th.frame_coords(draws), d, th.Schedule(steps, batch, lr), rng)
    np.testing.assert_allclose(full[:, 0], red[:, 0], atol=1e-6)  # same draws, same start
    for t in (2, steps):
        a, b = full[:, t] - full[:, 0], red[:, t] - red[:, 0]
        se = math.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) < 4 * se, (t, a.mean(), b.mean(), se)
        assert a.std() == pytest.approx(b.std(), rel=0.2)


def test_preference_improves_a_student_that_sft_on_the_chosen_labels_makes_worse():
    rng = np.random.default_rng(7)
    d, steps = 300, 24
    draws = th.make_draws(d, 3, ACC_80_70_60, rng)
    sched = th.Schedule.for_targets(ACC_80_70_60, steps, samples=8000)  # sweet spot at step 8, B = 1000
    lrs = th.geometric_lrs(sched.lr, steps, steps, 30.0)  # then train on, 30x longer in total
    cos = th.sgd_arms(draws, lrs, sched.batch, rng)
    start = cos["preference"][:, 0]
    pref_gain, _ = th.best_gain(cos["preference"][:, : steps + 1])
    assert np.all(pref_gain > 0)
    assert np.all(cos["sft"][:, -1] < start - 0.1)  # SFT fitted to the 70% teacher ends near its cosine
    assert np.all(np.abs(cos["sft"][:, -1] - ACC_80_70_60.alpha_c) < 0.1)
    rev_gain, _ = th.best_gain(cos["reversed"])
    assert np.all(rev_gain < 0)  # reversed preferences never improve the student


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(student=1.2, reading="cosine"), "--student"),
        (dict(chosen=-1.5, reading="cosine"), "--chosen"),
        (dict(rejected=1.1), "--rejected"),
        (dict(chosen=0.6, rejected=0.7), "--chosen"),
        (dict(chosen=0.7, rejected=0.7), "--rejected"),
        (dict(dim=1), "--dim"),
        (dict(dims=(10, 1)), "--dims"),
        (dict(steps=0), "--steps"),
        (dict(steps=-5), "--steps"),
        (dict(pairs=0), "--n-pairs"),
        (dict(sgd_pairs=5000), "--sgd-pairs"),
        (dict(lr=0.0), "--lr"),
    ],
)
def test_bad_input_names_the_option(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        th.TheoryConfig(**kwargs).validate()


def test_cli_writes_plots_and_results_json(tmp_path, capsys):
    from deltalearn.cli import main

    out = tmp_path / "theory"
    rc = main(["theory", "--quick", "--out", str(out), "--dims", "10,100", "--pairs", "200", "--sgd-pairs", "20",
               "--scatter-draws", "60", "--arm-draws", "3", "--steps", "15"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["experiment"] == "theory"
    for tb in res["tables"]:
        assert set(tb) >= {"title", "columns", "rows", "note"}
        assert all(len(r) == len(tb["columns"]) for r in tb["rows"])
    assert len(res["plots"]) == 3
    for p in res["plots"]:
        assert (out / p["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "read as accuracies" in printed and "read as cosines" in printed and "| d |" in printed

    assert main(["theory", "--out", str(out), "--chosen", "0.5", "--rejected", "0.6"]) == 2
    assert "--chosen" in capsys.readouterr().err
