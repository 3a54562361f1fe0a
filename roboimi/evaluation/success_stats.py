"""Confidence intervals for rollout success rates, so that evaluation reports say how sure a rate is.

A success rate from 50 rollouts is a binomial proportion with a wide margin of error (48 / 50 is compatible
with anything from ~86 % to ~99 %). This module gives:

* `wilson_interval`: the Wilson score interval of one rate; unlike the textbook Wald interval
  p +- z * sqrt(p (1 - p) / n) it keeps its coverage near rates of 0 and 1, where good policies live;
* `paired_difference`: the difference of two policies scored on the same episode seeds, with Newcombe's
  interval for paired proportions, which uses the correlation between the two policies' outcomes (episodes
  that are easy for one are usually easy for the other), so it is narrower than treating the runs as independent;
* `aggregate_runs`: the spread of the rate across training seeds next to the pooled rate;
* `format_rate`: the one-line form used in printed reports and tables.

Pure Python on purpose (no scipy / statsmodels): the normal quantile comes from `statistics.NormalDist`.
"""
import math
import statistics
from collections.abc import Mapping, Sequence


def _z(confidence: float) -> float:
    """The two-sided normal quantile for `confidence` (1.96 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (low, high) of the proportion successes / n, as fractions in [0, 1]."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes!r}")
    z = _z(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half_width = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    # At 0 / n and n / n the limit is exactly 0 or 1; the formula leaves round-off such as -1e-17 there.
    low = 0.0 if successes == 0 else centre - half_width
    high = 1.0 if successes == n else centre + half_width
    return low, high


def paired_difference(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> dict:
    """Difference of success rates p_a - p_b of two policies scored on the same episodes, in the same order.

    Returns {"difference", "interval": (low, high), "a_only", "b_only", "both", "neither", "n"}; "a_only" counts
    the episodes that a succeeds and b fails. The interval is Newcombe's (1998) hybrid score interval for paired
    proportions, his method 10 (no continuity correction of the Wilson limits): the Wilson limits of both rates,
    combined through the correlation phi of the paired outcomes. As in the paper, a positive phi is shrunk by
    N / 2 in its numerator (phi*): with the raw phi, two identical outcome lists at a 50 % rate would give the
    zero-width interval (0, 0). The limits are clipped to [-1, 1].

    Newcombe RG. Improved confidence intervals for the difference between binomial proportions based on paired
    data. Statistics in Medicine 1998; 17:2635-2650.
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must score the same episodes, got lengths {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError("a and b are empty: no episodes to compare")
    pairs = [(bool(x), bool(y)) for x, y in zip(a, b)]
    both = sum(x and y for x, y in pairs)
    a_only = sum(x and not y for x, y in pairs)
    b_only = sum(y and not x for x, y in pairs)
    neither = len(pairs) - both - a_only - b_only
    n = len(pairs)

    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = wilson_interval(both + a_only, n, confidence)
    l2, u2 = wilson_interval(both + b_only, n, confidence)
    cross = both * neither - a_only * b_only
    if cross > 0:
        # Newcombe's phi*: the raw phi overstates the correlation of small tables.
        cross = max(cross - n / 2.0, 0.0)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    # A margin of 0 (one policy always or never succeeds) leaves the correlation undefined; it carries no
    # information, so it is taken as 0.
    phi = cross / math.sqrt(margins) if margins else 0.0

    difference = p1 - p2
    below = math.sqrt((p1 - l1) ** 2 - 2.0 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    above = math.sqrt((u1 - p1) ** 2 - 2.0 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return {
        "difference": difference,
        "interval": (max(-1.0, difference - below), min(1.0, difference + above)),
        "a_only": a_only,
        "b_only": b_only,
        "both": both,
        "neither": neither,
        "n": n,
    }


def _rate_summary(successes: int, n: int, confidence: float) -> dict:
    interval = wilson_interval(successes, n, confidence)  # first: it rejects n = 0 by name
    return {"successes": successes, "n": n, "rate": successes / n, "interval": interval}


def aggregate_runs(runs: Mapping[str, Sequence[bool]], confidence: float = 0.95) -> dict:
    """Success rates of several training runs (one per training seed) scored on the same episode seeds.

    `runs` maps a label such as "seed 0" to that run's per-episode outcomes. Returns
    {"runs": {label: {"successes", "n", "rate", "interval"}}, "mean", "std", "min", "max", "pooled"}, where
    mean, std (sample standard deviation, 0.0 for a single run), min and max are over the per-run rates and
    "pooled" has the same fields for all episodes of all runs together.

    The pooled Wilson interval treats every episode as an independent draw, so it measures only the episode
    noise: it understates the spread between training seeds, which is what the std and the min rate show.
    Report both when comparing recipes.
    """
    if not runs:
        raise ValueError("runs is empty: need at least one run")
    lengths = {label: len(outcomes) for label, outcomes in runs.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"runs must score the same episodes, got episode counts {lengths}")
    per_run = {
        label: _rate_summary(sum(bool(x) for x in outcomes), len(outcomes), confidence)
        for label, outcomes in runs.items()
    }
    rates = [summary["rate"] for summary in per_run.values()]
    return {
        "runs": per_run,
        "mean": statistics.fmean(rates),
        "std": statistics.stdev(rates) if len(rates) > 1 else 0.0,
        "min": min(rates),
        "max": max(rates),
        "pooled": _rate_summary(
            sum(s["successes"] for s in per_run.values()), sum(s["n"] for s in per_run.values()), confidence
        ),
    }


def format_rate(successes: int, n: int, confidence: float = 0.95) -> str:
    """The count, the rate and its Wilson interval in whole percent: "48 / 50 (96 %, 95 % CI 86-99 %)".

    The rate is rounded half up; the interval is rounded outwards, so the printed range never claims more
    certainty than the computed one.
    """
    low, high = wilson_interval(successes, n, confidence)
    rate = math.floor(successes / n * 100.0 + 0.5)  # half up (1 / 8 -> 13 %); round() goes half to even
    # The 1e-9 keeps round-off (0.29 * 100 = 28.999999999999996) from pushing a limit one percent outwards.
    low_percent, high_percent = math.floor(low * 100.0 + 1e-9), math.ceil(high * 100.0 - 1e-9)
    return f"{successes} / {n} ({rate} %, {confidence * 100:g} % CI {low_percent}-{high_percent} %)"
