"""Geometry of the Section 6 setup: targets, draws with exact cosines, Condition C1, the population ray, and the
law of C1 over random teacher pairs (see the package docstring for the derivation)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deltalearn.recipe import ConfigError

SQRT_2PI = math.sqrt(2.0 * math.pi)
SLIDES_D = 2000  # the slides' example: d > 2000 suffices for 90% of teacher pairs (80% / 70% / 60%)
READINGS = ("accuracy", "cosine")

# ---------------------------------------------------------------------------------------------------------
# Accuracy <-> cosine, targets
# ---------------------------------------------------------------------------------------------------------


def accuracy_from_cosine(alpha):
    """Accuracy of a direction with cosine alpha to theta* for Gaussian inputs: 1 - arccos(alpha)/pi."""
    return 1.0 - np.arccos(np.clip(alpha, -1.0, 1.0)) / np.pi


def cosine_from_accuracy(acc):
    """Inverse of `accuracy_from_cosine`: cos(pi (1 - acc))."""
    return np.cos(np.pi * (1.0 - np.asarray(acc, dtype=float)))


@dataclass(frozen=True)
class Targets:
    """Cosines to theta* of student, chosen and rejected teacher, and how the user gave them."""

    alpha0: float
    alpha_c: float
    alpha_r: float
    reading: str = "cosine"
    given: tuple[float, float, float] = ()

    def label(self) -> str:
        g = self.given or (self.alpha0, self.alpha_c, self.alpha_r)
        return f"{g[0]:g}/{g[1]:g}/{g[2]:g} read as {'accuracies' if self.reading == 'accuracy' else 'cosines'}"


def make_targets(student: float, chosen: float, rejected: float, reading: str = "accuracy", *, need_gap: bool = True) -> Targets:
    """Validate targets given as accuracies or cosines and convert them to cosines. Errors name the CLI option."""
    if reading not in READINGS:
        raise ConfigError(f"--as: {reading!r} is not one of {', '.join(READINGS)}")
    lo, what = (0.0, "an accuracy in [0, 1]") if reading == "accuracy" else (-1.0, "a cosine in [-1, 1]")
    for opt, val in (("--student", student), ("--chosen", chosen), ("--rejected", rejected)):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and lo <= val <= 1.0):
            raise ConfigError(f"{opt}: {val!r} is not {what} (targets are read as {reading}; change --as to switch)")
    if need_gap and not chosen > rejected:
        raise ConfigError(
            f"--chosen ({chosen:g}) must be above --rejected ({rejected:g}): delta learning needs the chosen teacher "
            "to be better than the rejected one (alpha_c > alpha_r)"
        )
    conv = cosine_from_accuracy if reading == "accuracy" else float
    return Targets(float(conv(student)), float(conv(chosen)), float(conv(rejected)), reading, (student, chosen, rejected))


def _check_dim(d: int, opt: str = "--dim") -> None:
    if not isinstance(d, (int, np.integer)) or d < 2:
        raise ConfigError(f"{opt}: {d!r} is not a valid dimension; it must be an integer >= 2 (theta* needs an orthogonal complement)")


def _check_positive(val, opt: str) -> None:
    if val is None or not val > 0:
        raise ConfigError(f"{opt}: {val!r} must be positive")


# ---------------------------------------------------------------------------------------------------------
# Draws: student and teachers with exact cosines and random error directions
# ---------------------------------------------------------------------------------------------------------


def unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def error_directions(theta_star: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors uniform on the sphere of theta*'s orthogonal complement (project a Gaussian, normalize)."""
    g = rng.standard_normal((n, theta_star.shape[0]))
    g -= np.outer(g @ theta_star, theta_star)
    return unit_rows(g)


def with_cosine(theta_star: np.ndarray, alpha: float | np.ndarray, e: np.ndarray) -> np.ndarray:
    """Unit vectors alpha theta* + sqrt(1 - alpha^2) e (e unit, orthogonal to theta*): cosine exactly alpha."""
    alpha = np.asarray(alpha, dtype=float).reshape(-1, 1) if np.ndim(alpha) else float(alpha)
    return alpha * theta_star + np.sqrt(1.0 - alpha**2) * e


@dataclass
class Draws:
    """n independent (student, chosen, rejected) triples around one unit theta* in R^d; all vectors unit."""

    theta_star: np.ndarray  # (d,)
    e0: np.ndarray  # (n, d) error directions, unit, orthogonal to theta*
    ec: np.ndarray
    er: np.ndarray
    alpha0: np.ndarray  # (n,) cosines
    alpha_c: np.ndarray
    alpha_r: np.ndarray

    @property
    def n(self) -> int:
        return self.e0.shape[0]

    @property
    def d(self) -> int:
        return self.theta_star.shape[0]

    @property
    def student(self) -> np.ndarray:
        return with_cosine(self.theta_star, self.alpha0, self.e0)

    @property
    def chosen(self) -> np.ndarray:
        return with_cosine(self.theta_star, self.alpha_c, self.ec)

    @property
    def rejected(self) -> np.ndarray:
        return with_cosine(self.theta_star, self.alpha_r, self.er)


def make_draws(d: int, n: int, targets: Targets | tuple, rng: np.random.Generator) -> Draws:
    """n draws in dimension d. `targets` is a Targets or a tuple of per-draw cosine arrays (alpha0, alpha_c, alpha_r)."""
    _check_dim(d, "d")
    theta_star = unit_rows(rng.standard_normal(d))
    if isinstance(targets, Targets):
        a0, ac, ar = (np.full(n, t) for t in (targets.alpha0, targets.alpha_c, targets.alpha_r))
    else:
        a0, ac, ar = (np.broadcast_to(np.asarray(t, dtype=float), (n,)).copy() for t in targets)
    e0, ec, er = (error_directions(theta_star, n, rng) for _ in range(3))
    return Draws(theta_star, e0, ec, er, a0, ac, ar)


# ---------------------------------------------------------------------------------------------------------
# Condition C1 and the population ray
# ---------------------------------------------------------------------------------------------------------


def expected_label_gradient(u: np.ndarray) -> np.ndarray:
    """E[1{<u, x> >= 0} x] for x ~ N(0, I) and unit u: u / sqrt(2 pi) (Stein: E[1{g >= 0} g] = phi(0))."""
    return u / SQRT_2PI


def cos_along_ray(theta0: np.ndarray, v: np.ndarray, theta_star: np.ndarray, lam) -> np.ndarray:
    """f(lambda) = cos(theta0 + lambda v, theta*) for rows of theta0/v (theta* unit); lam broadcasts over rows."""
    lam = np.asarray(lam, dtype=float)[..., None]
    p = theta0 + lam * v
    return (p @ theta_star) / np.linalg.norm(p, axis=-1)


def ray_derivative(theta0: np.ndarray, v: np.ndarray, theta_star: np.ndarray) -> np.ndarray:
    """f'(0) = (<v,theta*>|theta0|^2 - <theta0,theta*><v,theta0>) / |theta0|^3, row-wise (theta* unit)."""
    n0 = np.linalg.norm(theta0, axis=-1)
    vt = np.sum(v * theta0, axis=-1)
    return ((v @ theta_star) * n0**2 - (theta0 @ theta_star) * vt) / n0**3


@dataclass
class C1:
    kappa: np.ndarray
    signal: np.ndarray
    noise: np.ndarray


def c1_terms(draws: Draws) -> C1:
    """Per-draw signal (alpha_c - alpha_r)(1 - alpha0^2), noise alpha0 s0 (s_c<e_c,e0> - s_r<e_r,e0>), kappa = their
    difference (= f'(0) for the unit student; see the module docstring)."""
    a0, ac, ar = draws.alpha0, draws.alpha_c, draws.alpha_r
    s0, sc, sr = (np.sqrt(1.0 - a**2) for a in (a0, ac, ar))
    rho_c = np.einsum("nd,nd->n", draws.ec, draws.e0)
    rho_r = np.einsum("nd,nd->n", draws.er, draws.e0)
    signal = (ac - ar) * (1.0 - a0**2)
    noise = a0 * s0 * (sc * rho_c - sr * rho_r)
    return C1(signal - noise, signal, noise)


def sample_overlaps(d: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws of <e, e0> for independent uniform unit e, e0 in R^(d-1): one coordinate of a uniform unit vector,
    rho^2 ~ Beta(1/2, (d-2)/2) with a random sign (d = 2: rho = +-1). Same law as the vector construction (tested)."""
    _check_dim(d, "d")
    sign = rng.choice((-1.0, 1.0), size=n)
    if d == 2:
        return sign
    return sign * np.sqrt(rng.beta(0.5, (d - 2) / 2.0, size=n))


def c1_fraction(d: int, targets: Targets, n: int, rng: np.random.Generator) -> float:
    """Monte-Carlo P(kappa > 0) from the exact law of the two overlaps (O(n), any d)."""
    a0, ac, ar = targets.alpha0, targets.alpha_c, targets.alpha_r
    s0, sc, sr = (math.sqrt(max(0.0, 1.0 - a**2)) for a in (a0, ac, ar))
    noise = a0 * s0 * (sc * sample_overlaps(d, n, rng) - sr * sample_overlaps(d, n, rng))
    return float(np.mean((ac - ar) * (1.0 - a0**2) - noise > 0))


def _noise_ratio(t: Targets) -> tuple[float, float, float]:
    """(signal/(alpha0 s0), sqrt(s_c^2 + s_r^2), s_c + s_r): the noise is alpha0 s0 (s_c rho_c - s_r rho_r)."""
    s0, sc, sr = (math.sqrt(max(0.0, 1.0 - a**2)) for a in (t.alpha0, t.alpha_c, t.alpha_r))
    return (t.alpha_c - t.alpha_r) * s0 / max(t.alpha0, 1e-12), math.hypot(sc, sr), sc + sr


def c1_fraction_normal(d: int, t: Targets) -> float:
    """Large-d approximation: rho ~ N(0, 1/(d-1)), so P(C1) = Phi(sqrt(d-1) * margin / sqrt(s_c^2 + s_r^2))."""
    m, l2, _ = _noise_ratio(t)
    return 0.5 * (1.0 + math.erf(math.sqrt(d - 1) * m / l2 / math.sqrt(2.0)))


def sufficient_d(t: Targets, coverage: float = 0.9) -> dict[str, int]:
    """Bound-style d that *guarantees* coverage, from concentration on the sphere (P(rho > s) <= exp(-(d-1)s^2/2)).
    'subgaussian': the noise as one sub-Gaussian sum; 'union': |rho_c|, |rho_r| each small, union bound over four
    tails. These are the kind of sufficient conditions a proof uses, not the true rate."""
    m, l2, l1 = _noise_ratio(t)
    delta = 1.0 - coverage
    return {
        "subgaussian": int(math.ceil(1 + 2 * math.log(1 / delta) * (l2 / m) ** 2)),
        "union": int(math.ceil(1 + 2 * math.log(4 / delta) * (l1 / m) ** 2)),
    }


def smallest_d_c1(t: Targets, coverage: float = 0.9, n: int = 200_000, seed: int = 0, d_max: int = 10**6) -> int:
    """Smallest integer d with P(C1) >= coverage (Monte Carlo, exact overlap law; bisection, common seed)."""
    f = lambda d: c1_fraction(d, t, n, np.random.default_rng(seed))  # noqa: E731 - common random numbers
    if f(2) >= coverage:
        return 2
    lo, hi = 2, 4
    while f(hi) < coverage:
        lo, hi = hi, hi * 2
        if hi > d_max:
            return -1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if f(mid) < coverage else (lo, mid)
    return hi


def ray_optimum(alpha0, g, b, c):
    """Best point on the population ray for a unit student: f(l) = (alpha0 + l g)/sqrt(1 + 2 l b + l^2 c), with
    g = <v,theta*>, b = <v,theta0>, c = |v|^2. Returns (lambda*, max gain); lambda* = 0 when kappa <= 0, inf when f
    rises for ever (then the gain is the limit g/sqrt(c) - alpha0)."""
    alpha0, g, b, c = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (alpha0, g, b, c)))
    kappa = g - alpha0 * b
    denom = alpha0 * c - g * b
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(kappa <= 0, 0.0, np.where(denom > 0, kappa / denom, np.inf))
        f_inf = g / np.sqrt(c)
        f_lam = (alpha0 + lam * g) / np.sqrt(1 + 2 * lam * b + lam**2 * c)
    gain = np.where(np.isinf(lam), f_inf, np.where(lam == 0, alpha0, f_lam)) - alpha0
    return lam, gain


def typical_lambda(t: Targets) -> float:
    """lambda* for the high-d expected geometry (overlaps 0): b = alpha0 g, |v|^2 = 2 - 2 alpha_c alpha_r. Used to
    pick a step size from the targets alone (no peeking at a draw's own errors). Capped at 1 when f never turns."""
    g = t.alpha_c - t.alpha_r
    lam, _ = ray_optimum(t.alpha0, g, t.alpha0 * g, 2.0 - 2.0 * t.alpha_c * t.alpha_r)
    return float(min(lam, 1.0)) if lam > 0 else 0.1
