r"""Delta learning in intercept-free logistic regression (paper Section 6): Condition C1, real SGD, Corollary 6.2.

Setup (exactly the paper's). Inputs x ~ N(0, I_d); a unit ground truth theta*. A direction theta has cosine
alpha = cos(theta, theta*) and accuracy 1 - arccos(alpha)/pi (the probability that sign<theta, x> agrees with
sign<theta*, x> for Gaussian x). The student theta_0 and the teachers theta_c, theta_r are built with *exact*
cosines: theta = alpha theta* + sqrt(1 - alpha^2) e, where the error direction e is uniform on the unit sphere of
theta*'s orthogonal complement. Labels y = 1{<theta_teacher, x> >= 0}; the student is p_theta(y=1|x) =
sigmoid(<theta, x>).

The update. d/dtheta log p_theta(y|x) = (y - sigmoid(<theta, x>)) x, so the naive preference loss
L = -(log p(y_c|x) - log p(y_r|x)) has gradient -(y_c - y_r) x: the sigmoid cancels, and an SGD step is
theta <- theta + eta/B sum_i (y_c,i - y_r,i) x_i, independent of theta. Since E[1{<u, x> >= 0} x] = u/sqrt(2 pi)
for unit u (tested), the expected step is eta/sqrt(2 pi) * v with v = u_c - u_r, u = theta/|theta| (the paper's
v_delta). The population iterate is the ray theta_0 + lambda v, lambda = eta t / sqrt(2 pi).

Condition C1 (derived here). Let f(lambda) = cos(theta_0 + lambda v, theta*) = <theta_0 + lambda v, theta*> /
|theta_0 + lambda v|. Differentiating the quotient at lambda = 0:

    f'(0) = (<v, theta*> |theta_0|^2 - <theta_0, theta*> <v, theta_0>) / |theta_0|^3,

which for a unit student is f'(0) = <v, theta*> - alpha_0 <v, theta_0>. Insert theta_0 = alpha_0 theta* + s_0 e_0,
u_c = alpha_c theta* + s_c e_c, u_r = alpha_r theta* + s_r e_r (s = sqrt(1 - alpha^2), e's unit and orthogonal to
theta*): <v, theta*> = alpha_c - alpha_r and <v, theta_0> = alpha_0 (alpha_c - alpha_r) + s_0 (s_c <e_c, e_0> -
s_r <e_r, e_0>), so

    kappa := f'(0) = (alpha_c - alpha_r)(1 - alpha_0^2)  -  alpha_0 s_0 (s_c <e_c, e_0> - s_r <e_r, e_0>)
                     \________ signal ________/          \______________ noise ______________/

C1 is kappa > 0 (for a non-unit student f'(0) = kappa/|theta_0|: same sign). The noise is the part of the
teachers' error directions that happens to lie along the student's own error direction. Each overlap
<e, e_0> is one coordinate of a uniform unit vector in R^(d-1): mean 0, variance 1/(d-1). So the noise shrinks like
1/sqrt(d) while the signal does not, and for large d, P(C1) ~ Phi(sqrt(d-1) (alpha_c - alpha_r) s_0 /
(alpha_0 sqrt(s_c^2 + s_r^2))) -- Corollary 6.2's "in high dimension most pairs with a gap improve the student".
Along the ray the direction of theta_0 + lambda v turns monotonically from theta_0 towards v, so (for alpha_0 > 0)
kappa <= 0 means no lambda > 0 improves the student; if kappa > 0 the best point is
lambda* = kappa / (alpha_0 |v|^2 - <v, theta*><v, theta_0>) (infinite when the denominator is <= 0, i.e. when v
itself is better aligned than the student). Past lambda* the student drifts towards v, i.e. it overfits the
teachers' errors: the sweet spot in training length (Theorem 6.1; the gain there is Theta(kappa^2)).

Real SGD. `sgd_arms` runs full d-dimensional SGD on fresh Gaussian batches, vectorized over draws (arrays of
draws x batch x d), for four arms sharing the same samples: preference (chosen > rejected), SFT (logistic loss on
y_c), reversed (rejected > chosen) and tied (two different teachers of the chosen's quality). `sgd_preference`
runs the preference arm exactly but cheaply for large d: the labels depend on x only through its coordinates in
the span S of (theta*, theta_0, u_c, u_r); only samples on which the teachers disagree move theta, and their
in-plane part can be sampled directly (angle uniform on a wedge, Rayleigh radius); the part of each step outside S
is an isotropic Gaussian that only adds norm, so its squared length is tracked as a random walk with exact
chi-square increments. Same distribution as the full simulation (tested), with cost independent of d.

SFT in this model (a finding, not a claim of the paper). SFT on y_c moves theta along E[(y_c - sigmoid)x] =
u_c/sqrt(2 pi) - E[sigmoid'] theta: towards u_c. The same derivative gives its first-order effect,
alpha_c (1 - alpha_0^2) - alpha_0 s_0 s_c <e_c, e_0>, which is positive in high d even for a weaker teacher: the
teacher's errors are nearly orthogonal to the student's, so a little of the teacher averages errors away. SFT
hurts only when trained towards convergence, where theta's direction tends to u_c (cos -> alpha_c). At 80/70/60
accuracies, d = 200, SFT's best point (cos ~0.84) is above the preference arm's (~0.81); trained 30x longer SFT ends
near alpha_c = 0.59 and the preference arm near cos(v, theta*) = 0.22. The arms plot shows both phases.

Corollary 6.2 vs the slides. The slides say that for a student at 80% and teachers at 70% / 60%, "d > 2000
suffices for 90% of teacher pairs". `corollary` measures the true rate under both readings of 80/70/60
(accuracies, cosines): C1 holds for 90% of pairs from d = 64 (accuracies) or d = 336 (cosines), and SGD stopped at
its best step follows C1 pair by pair (SGD stopped at a step planned from the targets alone needs d ~ 200 / ~1000).
2000 reads as a *sufficient* bound, most plausibly from a concentration inequality on the noise term, loose by
design: a sub-Gaussian tail bound on the noise gives 177 / 943 and a union bound over the two overlaps 559 / 3009,
so 2000 sits between the bound-style numbers of the cosine reading. `run` prints these next to the measured ones.
"""

from deltalearn.theory.experiments import TheoryConfig, arms_experiment, corollary, scatter_experiment
from deltalearn.theory.geometry import (
    READINGS,
    SLIDES_D,
    SQRT_2PI,
    C1,
    Draws,
    Targets,
    accuracy_from_cosine,
    c1_fraction,
    c1_fraction_normal,
    c1_terms,
    cos_along_ray,
    cosine_from_accuracy,
    error_directions,
    expected_label_gradient,
    make_draws,
    make_targets,
    ray_derivative,
    ray_optimum,
    sample_overlaps,
    smallest_d_c1,
    sufficient_d,
    typical_lambda,
    unit_rows,
    with_cosine,
)
from deltalearn.theory.run import add_cli_args, markdown, run, run_cli
from deltalearn.theory.sgd import ARMS, Schedule, best_gain, frame_coords, geometric_lrs, sgd_arms, sgd_preference

__all__ = [
    "accuracy_from_cosine",
    "add_cli_args",
    "ARMS",
    "arms_experiment",
    "best_gain",
    "C1",
    "c1_fraction",
    "c1_fraction_normal",
    "c1_terms",
    "corollary",
    "cos_along_ray",
    "cosine_from_accuracy",
    "Draws",
    "error_directions",
    "expected_label_gradient",
    "frame_coords",
    "geometric_lrs",
    "make_draws",
    "make_targets",
    "markdown",
    "ray_derivative",
    "ray_optimum",
    "READINGS",
    "run",
    "run_cli",
    "sample_overlaps",
    "scatter_experiment",
    "Schedule",
    "sgd_arms",
    "sgd_preference",
    "SLIDES_D",
    "smallest_d_c1",
    "SQRT_2PI",
    "sufficient_d",
    "Targets",
    "TheoryConfig",
    "typical_lambda",
    "unit_rows",
    "with_cosine",
]
