"""SGD for the Section 6 model: full d-dimensional SGD for four arms, and the exact span-reduced preference SGD."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deltalearn.theory.geometry import SQRT_2PI, Draws, Targets, error_directions, typical_lambda, with_cosine


@dataclass(frozen=True)
class Schedule:
    """SGD hyperparameters: T steps of batch B with step size lr (scalar or one per draw)."""

    steps: int
    batch: int
    lr: float | np.ndarray

    @staticmethod
    def for_targets(t: Targets | np.ndarray, steps: int, samples: float) -> "Schedule":
        """Step size that puts the expected sweet spot (`typical_lambda`, or per-draw lambdas) at steps/3, and a
        batch that makes the samples seen up to it `samples`. Why the samples matter: the gain at the sweet spot is
        Theta(kappa^2) and independent of d, while SGD noise costs ~ d/samples (norm added outside the span) and
        ~ 1/sqrt(samples) (jitter inside it)."""
        lam = t if isinstance(t, np.ndarray) else typical_lambda(t)
        sweet = max(1.0, steps / 3.0)
        return Schedule(steps, max(32, int(math.ceil(samples / sweet))), SQRT_2PI * lam / sweet)


def _chunks(n: int, per_row: int, budget: int = 8_000_000):
    size = max(1, budget // max(1, per_row))
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def geometric_lrs(lr: float, steps: int, long_steps: int, factor: float) -> np.ndarray:
    """`steps` steps at lr, then `long_steps` steps whose lr grows geometrically so that the total sum of step sizes
    is `factor` times the first phase's: a long run (towards convergence) at the cost of a short one."""
    lrs = np.full(steps, float(lr))
    if long_steps <= 0:
        return lrs
    target = (factor - 1.0) * lr * steps
    lo, hi = 1.0, 2.0
    while lr * np.sum(hi ** np.arange(1, long_steps + 1)) < target:
        hi *= 2.0
    for _ in range(60):  # bisection on the growth ratio q: lr * sum_k q^k = target
        q = (lo + hi) / 2
        lo, hi = (q, hi) if lr * np.sum(q ** np.arange(1, long_steps + 1)) < target else (lo, q)
    return np.concatenate([lrs, lr * hi ** np.arange(1, long_steps + 1)])


ARMS = ("preference", "sft", "reversed", "tied")


def sgd_arms(draws: Draws, lrs: np.ndarray, batch: int, rng: np.random.Generator, arms=ARMS) -> dict[str, np.ndarray]:
    """Full d-dimensional SGD from the student, every arm on the same fresh Gaussian batches (x: draws x batch x d),
    step t with step size lrs[t-1]. Returns arm -> cos(theta_t, theta*), shape (n, len(lrs) + 1). Arms: preference
    (+(y_c - y_r) x), reversed (+(y_r - y_c) x), sft (+(y_c - sigmoid(<theta, x>)) x: logistic loss on y_c alone),
    tied (+(y_c - y_t) x, y_t from a second teacher with the chosen's cosine and its own error direction; identical
    teachers would give exactly zero steps)."""
    n, d, B = draws.n, draws.d, batch
    teachers = [draws.chosen, draws.rejected]
    if "tied" in arms:
        teachers.append(with_cosine(draws.theta_star, draws.alpha_c, error_directions(draws.theta_star, n, rng)))
    U = np.stack(teachers, axis=-1).astype(np.float32)  # (n, d, k)
    star = draws.theta_star.astype(np.float32)
    theta = {a: draws.student.astype(np.float32) for a in arms}
    out = {a: np.empty((n, len(lrs) + 1)) for a in arms}

    def record(t):
        for a in arms:
            out[a][:, t] = (theta[a] @ star) / np.linalg.norm(theta[a], axis=-1)

    record(0)
    for t, lr in enumerate(lrs, start=1):
        x = rng.standard_normal((n, B, d), dtype=np.float32)
        y = (np.matmul(x, U) >= 0).astype(np.float32)  # (n, B, k): y_c, y_r[, y_t]
        for a in arms:
            if a == "preference":
                w = y[..., 0] - y[..., 1]
            elif a == "reversed":
                w = y[..., 1] - y[..., 0]
            elif a == "tied":
                w = y[..., 0] - y[..., 2]
            elif a == "sft":
                w = y[..., 0] - 1.0 / (1.0 + np.exp(-np.matmul(x, theta[a][:, :, None])[..., 0]))
            else:
                raise ValueError(f"unknown arm {a!r}; arms are {ARMS}")
            theta[a] = theta[a] + np.float32(lr / B) * np.matmul(w[:, None, :], x)[:, 0]
        record(t)
    return out


def frame_coords(draws: Draws) -> np.ndarray:
    """Coordinates of (theta*, theta0, u_c, u_r) in an orthonormal frame of their span, per draw: (n, k, 4),
    k = min(d, 4). The frame starts from the teachers (u_c, then u_r), with signs fixed so that u_c = (1, 0, ...)
    and u_r = (cos psi, sin psi, 0, ...), psi = angle(u_c, u_r) in [0, pi]."""
    M = np.stack([draws.chosen, draws.rejected, np.broadcast_to(draws.theta_star, draws.e0.shape), draws.student], axis=-1)
    out = []
    for s in _chunks(draws.n, draws.d * 8):
        Q, R = np.linalg.qr(M[s])  # Householder Q is orthonormal even when the span has rank < 4
        sign = np.where(np.diagonal(R, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
        C = np.einsum("ndk,ndj->nkj", Q, M[s]) * sign[:, :, None]
        out.append(C[..., [2, 3, 0, 1]])
    return np.concatenate(out)


def sgd_preference(coords: np.ndarray, d: int, sched: Schedule, rng: np.random.Generator) -> np.ndarray:
    """Preference SGD, exact in distribution, at O(disagreeing samples) cost per step for any d.

    Write x = Q z + x_perp with Q the frame of `frame_coords` (z ~ N(0, I_k)). A sample moves theta only when the
    teachers disagree (y_c != y_r), which happens when z's angle in the teachers' plane falls in one of two
    antipodal wedges of width psi: m ~ Binomial(B, psi/pi). The sample with y_c = 0, y_r = 1 enters as -z, which
    is again a Gaussian point in the first wedge, so the in-plane step is a sum of m points with angle uniform on
    [-pi/2, psi - pi/2) and Rayleigh radius. The other in-span coordinates sum to N(0, m) each. Outside the span
    the step is isotropic with variance m/B^2 and orthogonal to theta*: it only adds norm, tracked through
    |W|^2 <- (|W| + sd xi)^2 + sd^2 chi2_{d-k-1}. Returns cos(theta_t, theta*), (n, T+1)."""
    n, k, _ = coords.shape
    star, theta = coords[..., 0].astype(np.float64), coords[..., 1].astype(np.float64).copy()
    psi = np.arctan2(coords[:, 1, 3], coords[:, 0, 3]) if k > 1 else np.zeros(n)
    psi = np.clip(psi, 0.0, np.pi)
    lr = np.broadcast_to(np.asarray(sched.lr, dtype=np.float64), (n,))
    B, dof = sched.batch, d - k
    w2 = np.zeros(n)
    out = np.empty((n, sched.steps + 1))
    out[:, 0] = np.sum(theta * star, -1) / np.sqrt(np.sum(theta**2, -1) + w2)
    for t in range(1, sched.steps + 1):
        m = rng.binomial(B, psi / np.pi)
        step = np.zeros((n, k))
        M = int(m.max())
        for s in _chunks(n, 2 * M):
            phi = (rng.random((s.stop - s.start, M), dtype=np.float32) * psi[s, None] - np.pi / 2).astype(np.float32)
            rad = np.sqrt(-2.0 * np.log1p(-rng.random((s.stop - s.start, M), dtype=np.float32)))
            rad *= np.arange(M) < m[s, None]  # the first m points of each draw are its disagreeing samples
            step[s, 0] = np.sum(rad * np.cos(phi), -1, dtype=np.float64)
            step[s, 1] = np.sum(rad * np.sin(phi), -1, dtype=np.float64) if k > 1 else 0.0
        if k > 2:
            step[:, 2:] = rng.standard_normal((n, k - 2)) * np.sqrt(m)[:, None]
        theta += (lr / B)[:, None] * step
        if dof > 0:
            sd = lr * np.sqrt(m) / B
            rest = rng.gamma((dof - 1) / 2.0, 2.0, size=n) if dof > 1 else 0.0
            w2 = (np.sqrt(w2) + sd * rng.standard_normal(n)) ** 2 + sd**2 * rest
        out[:, t] = np.sum(theta * star, -1) / np.sqrt(np.sum(theta**2, -1) + w2)
    return out


def best_gain(cos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best-step gain max_{t >= 1} cos_t - cos_0 and the step reaching it, per draw."""
    i = np.argmax(cos[:, 1:], axis=1) + 1
    return cos[np.arange(cos.shape[0]), i] - cos[:, 0], i
