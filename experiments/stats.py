"""The statistics of the tables: Welch's two-sample t-test (with the incomplete beta
function it needs), the methods not worse than the best (the paper's bold), ours
against the paper in standard errors, and mean ± std."""
import math

import numpy as np


def _incomplete_beta(a, b, x):
    """The regularised incomplete beta function I_x(a, b), by its continued fraction
    (modified Lentz), using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) for
    convergence."""
    if x <= 0.0 or x >= 1.0:
        return min(max(x, 0.0), 1.0)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def welch_t_test(a, b):
    """Two-sided p-value of Welch's two-sample t-test (unequal variances)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return _incomplete_beta(df / 2, 0.5, df / (df + t * t))


def not_worse_than_best(scores, level=0.05):
    """The methods whose scores are the best mean or not significantly different from
    it (Welch's t-test at ``level``), as the paper marks in bold."""
    best = max(scores, key=lambda m: np.mean(scores[m]))
    return {m for m, s in scores.items()
            if m == best or (len(s) > 1 and len(scores[best]) > 1
                             and welch_t_test(s, scores[best]) >= level)}


PAPER_RUNS = 8


def _variance_of_mean(values):
    """s^2 / n, the squared standard error of the mean of ``values`` (0 for one value)."""
    values = np.asarray(values, dtype=float)
    return values.var(ddof=1) / len(values) if len(values) > 1 else 0.0


def _cell(difference, two_se):
    """A difference, twice its standard error and the verdict: ``within`` 2 SE, else
    which side, ``above`` or ``below`` (never hidden)."""
    verdict = "within" if abs(difference) <= two_se else "above" if difference > 0 else "below"
    return f"{difference:+.2f} (2 SE {two_se:.2f}): {verdict}"


def against_paper(values, paper):
    """ours - paper and twice its standard error, sqrt(s^2/n + s_paper^2/8) (the paper's
    8 runs), as a table cell: the goal is |ours - paper| <= 2 SE (``_cell``)."""
    two_se = 2 * math.sqrt(_variance_of_mean(values) + paper[1] ** 2 / PAPER_RUNS)
    return _cell(np.mean(values) - paper[0], two_se)


def gap_against_paper(values, base, paper, paper_base):
    """Our gap mean(values) - mean(base) against the paper's gap, with twice the
    standard error of their difference, all four means' variances combined."""
    ours, theirs = np.mean(values) - np.mean(base), paper[0] - paper_base[0]
    two_se = 2 * math.sqrt(_variance_of_mean(values) + _variance_of_mean(base)
                           + (paper[1] ** 2 + paper_base[1] ** 2) / PAPER_RUNS)
    return f"{ours:+.2f}, paper {theirs:+.2f}: {_cell(ours - theirs, two_se)}"


def _mean_std(values):
    if any(v is None for v in values):
        return "-"  # not computed (IOP's exact value at the tighter S beyond EXACT_BUDGET)
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f}"


def _change(before, after):
    """The change of the means and twice its standard error, as ``+4.00 (2.83)``."""
    two_se = 2 * math.sqrt(_variance_of_mean(after) + _variance_of_mean(before))
    return f"{np.mean(after) - np.mean(before):+.2f} ({two_se:.2f})"
