"""The three experiments of `deltalearn theory`: arms (cos vs step), Theorem 6.1 scatter, Corollary 6.2 sweep."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from deltalearn.recipe import ConfigError
from deltalearn.theory.geometry import (
    READINGS, SQRT_2PI, Draws, Targets, _check_dim, _check_positive, c1_fraction_normal, c1_terms, cos_along_ray,
    cosine_from_accuracy, make_draws, make_targets, ray_optimum, typical_lambda,
)
from deltalearn.theory.sgd import Schedule, _chunks, best_gain, frame_coords, geometric_lrs, sgd_arms, sgd_preference


@dataclass
class TheoryConfig:
    student: float = 0.8
    chosen: float = 0.7
    rejected: float = 0.6
    reading: str = "accuracy"
    """How student/chosen/rejected are read for the arms run; the Corollary shows both readings when both are valid."""
    dim: int = 200
    """Dimension of the arms run (full SGD) and of the Theorem 6.1 scatter."""
    dims: tuple[int, ...] = (10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000)
    pairs: int = 2000
    """Teacher pairs per d for the C1 fraction (explicit d-dimensional vectors)."""
    sgd_pairs: int = 200
    """Of those, pairs per d also trained by preference SGD (0: C1 only)."""
    arm_draws: int = 32
    scatter_draws: int = 1000
    steps: int = 120
    """SGD steps T; the step size puts the expected sweet spot at T/3."""
    long_factor: float = 30.0
    """Arms run: after T steps, T more with growing step sizes until the total is long_factor x the first T's."""
    batch: int | None = None
    """None: chosen so the samples seen up to the sweet spot are max(samples_per_dim * d, min_samples)."""
    lr: float | None = None
    """None: chosen so the expected sweet spot is at T/3."""
    samples_per_dim: float = 50.0
    min_samples: int = 200_000
    """Floor on samples up to the sweet spot for the span-reduced SGD (the gain there is ~1e-3 in cos)."""
    seed: int = 0

    def validate(self) -> None:
        make_targets(self.student, self.chosen, self.rejected, self.reading)
        _check_dim(self.dim, "--dim")
        if not self.dims:
            raise ConfigError("--dims: give at least one dimension")
        for d in self.dims:
            _check_dim(d, "--dims")
        for opt, val in (("--steps", self.steps), ("--n-pairs", self.pairs), ("--arm-draws", self.arm_draws),
                         ("--scatter-draws", self.scatter_draws), ("--samples-per-dim", self.samples_per_dim)):
            _check_positive(val, opt)
        if self.steps < 3:
            raise ConfigError(f"--steps: {self.steps} is too few; the sweet spot is placed at steps/3, so use at least 3")
        if self.long_factor < 1:
            raise ConfigError(f"--long-factor: {self.long_factor} must be >= 1 (1 = no long phase)")
        if self.sgd_pairs < 0 or self.sgd_pairs > self.pairs:
            raise ConfigError(f"--sgd-pairs: {self.sgd_pairs} must be between 0 and --n-pairs ({self.pairs})")
        if self.batch is not None:
            _check_positive(self.batch, "--batch")
        if self.lr is not None:
            _check_positive(self.lr, "--lr")

    def schedule(self, t, d: int, floor: bool = True) -> Schedule:
        samples = max(self.samples_per_dim * d, self.min_samples if floor else 0)
        s = Schedule.for_targets(t, self.steps, samples)
        return replace(s, batch=self.batch or s.batch, lr=s.lr if self.lr is None else self.lr)


QUICK = dict(dim=100, dims=(10, 30, 100, 300, 1000), pairs=400, sgd_pairs=40, arm_draws=8, scatter_draws=200,
             steps=45, samples_per_dim=20.0, min_samples=20_000)


def readings_of(cfg: TheoryConfig) -> list[str]:
    """Both readings of the targets when both are valid (negative cosines are not accuracies), else the given one."""
    ok = []
    for reading in READINGS:
        try:
            make_targets(cfg.student, cfg.chosen, cfg.rejected, reading)
            ok.append(reading)
        except ConfigError:
            pass
    return ok if cfg.reading in ok else [cfg.reading]


def arms_experiment(cfg: TheoryConfig, t: Targets, rng) -> dict:
    """cos vs step for the four arms (full SGD, d = cfg.dim): T steps at the preference arm's step size, then a long
    phase; plus the preference arm's population ray averaged over draws."""
    draws = make_draws(cfg.dim, cfg.arm_draws, t, rng)
    sched = cfg.schedule(t, cfg.dim, floor=False)  # full-d SGD costs B*d per step: no min_samples floor here
    lrs = geometric_lrs(float(sched.lr), cfg.steps, cfg.steps if cfg.long_factor > 1 else 0, cfg.long_factor)
    cos = sgd_arms(draws, lrs, sched.batch, rng)
    v = draws.chosen - draws.rejected
    lam = np.concatenate([[0.0], np.cumsum(lrs)]) / SQRT_2PI
    ray = np.mean(cos_along_ray(draws.student[:, None, :], v[:, None, :], draws.theta_star, lam[None, :]), axis=0)
    limits = {"preference": float(np.mean((v @ draws.theta_star) / np.linalg.norm(v, axis=-1))), "sft": t.alpha_c}
    return {"cos": cos, "ray": ray, "lrs": lrs, "batch": sched.batch, "kappa": c1_terms(draws).kappa, "limits": limits}


def scatter_experiment(cfg: TheoryConfig, rng) -> dict:
    """Theorem 6.1: random accuracies (student 65-95%, chosen 55-95%, rejected 50%-chosen), d = cfg.dim, per-draw
    step size from the draw's targets; best-step and planned-step (T/3) SGD gains vs kappa, and the population
    optimum gain."""
    n = cfg.scatter_draws
    acc0 = rng.uniform(0.65, 0.95, n)
    accc = rng.uniform(0.55, 0.95, n)
    accr = rng.uniform(0.5, accc)
    a = [cosine_from_accuracy(x) for x in (acc0, accc, accr)]
    draws = make_draws(cfg.dim, n, tuple(a), rng)
    lam = np.array([typical_lambda(Targets(*map(float, z))) for z in zip(*a)])
    sched = cfg.schedule(lam, cfg.dim)
    cos = sgd_preference(frame_coords(draws), cfg.dim, sched, rng)
    gain, _ = best_gain(cos)
    v = draws.chosen - draws.rejected
    _, pop = ray_optimum(draws.alpha0, v @ draws.theta_star, np.sum(v * draws.student, -1), np.sum(v * v, -1))
    planned = cos[:, max(1, cfg.steps // 3)] - cos[:, 0]
    return {"kappa": c1_terms(draws).kappa, "gain": gain, "planned": planned, "pop_gain": pop, "sched": sched}


def corollary(cfg: TheoryConfig, t: Targets, rng) -> list[dict]:
    """Per d: fraction of teacher pairs satisfying C1 (explicit vectors), normal approximation, and the fraction
    whose student improves under preference SGD (best step, and at the planned step T/3) for the first
    cfg.sgd_pairs pairs."""
    rows = []
    for d in cfg.dims:
        t0 = time.perf_counter()
        kappas, coords = [], []
        for s in _chunks(cfg.pairs, 4 * d, budget=2_000_000):
            draws = make_draws(d, s.stop - s.start, t, rng)
            kappas.append(c1_terms(draws).kappa)
            need = cfg.sgd_pairs - sum(len(c) for c in coords)
            if need > 0:
                sub = Draws(draws.theta_star, *(getattr(draws, f)[:need] for f in ("e0", "ec", "er", "alpha0", "alpha_c", "alpha_r")))
                coords.append(frame_coords(sub))
        kappa = np.concatenate(kappas)
        row = {"d": d, "c1": float(np.mean(kappa > 0)), "normal": c1_fraction_normal(d, t), "c1_s": time.perf_counter() - t0}
        if coords:
            t1 = time.perf_counter()
            sched = cfg.schedule(t, d)
            cos = sgd_preference(np.concatenate(coords), d, sched, rng)
            gain, _ = best_gain(cos)
            planned = cos[:, max(1, cfg.steps // 3)] - cos[:, 0]
            row.update(sgd=float(np.mean(gain > 0)), sgd_planned=float(np.mean(planned > 0)), sgd_n=len(gain),
                       c1_sgd_pairs=float(np.mean(kappa[: len(gain)] > 0)), batch=sched.batch, sgd_s=time.perf_counter() - t1)
        rows.append(row)
    return rows


def crossing(rows: list[dict], key: str, level: float = 0.9) -> tuple[int | None, float | None]:
    """Smallest grid d with fraction >= level, and the crossing interpolated linearly in log d."""
    prev = None
    for r in rows:
        if key in r and r[key] >= level:
            if prev is None or prev[key] >= r[key]:
                return r["d"], float(r["d"])
            f = (level - prev[key]) / (r[key] - prev[key])
            return r["d"], float(math.exp(math.log(prev["d"]) + f * (math.log(r["d"]) - math.log(prev["d"]))))
        if key in r:
            prev = r
    return None, None
