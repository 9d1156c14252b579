"""Seed statistics the analysis renderers share: mean and sample sd, a paired t interval, steps to a fraction of
the final score, and a seed bootstrap of the Spearman correlation between rank and best learning rate.

Every function takes plain numbers (the renderers read them from result.json / metrics.jsonl) and says which
statistic it is, because each has a plausible twin that gives other numbers (sd vs standard error, paired vs
unpaired interval, Spearman vs Pearson).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and **sample standard deviation** (ddof = 1: the spread of one seed, not the standard error of the
    mean); sd is nan for fewer than two values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


@dataclass(frozen=True)
class PairedDiff:
    """Mean of the per-seed differences a - b and its two-sided t interval over the n pairs."""

    mean: float
    low: float
    high: float
    n: int
    sd: float  # sample sd of the differences


def paired_t_interval(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> PairedDiff:
    """t interval of mean(a[s] - b[s]) over the seeds s both have: mean ± t_{n-1} · sd(d) / sqrt(n).

    Paired by seed (same data order, same initial head and A), so seed-to-seed variation both share cancels;
    the interval is nan for fewer than two pairs.
    """
    from scipy.stats import t

    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    mean, sd = mean_sd(d)
    if len(d) < 2:
        return PairedDiff(mean, math.nan, math.nan, len(d), sd)
    half = float(t.ppf(0.5 + confidence / 2, len(d) - 1)) * sd / math.sqrt(len(d))
    return PairedDiff(mean, mean - half, mean + half, len(d), sd)


def steps_to_fraction(curve: Mapping[int, float], final: float, fraction: float) -> int | None:
    """The first step whose score reaches ``fraction`` x ``final`` (a score that grows with training), or None."""
    target = fraction * final
    return next((s for s in sorted(curve) if curve[s] >= target), None)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get mean ranks); None below 3 points or when x or y is constant."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def argmax_lr(row: Mapping[float, float]) -> float:
    """The learning rate with the highest score; ties go to the smaller learning rate."""
    return max(sorted(row), key=lambda lr: row[lr])


#: (rank -> seed -> lr -> score): one method's grid, per seed
SeedGrid = Mapping[int, Mapping[int, Mapping[float, float]]]


def mean_rows(grid: SeedGrid, pick: Callable[[int, list[int]], list[int]] | None = None) -> dict[int, dict[float, float]]:
    """rank -> lr -> mean score over the seeds (``pick(rank, seeds)`` chooses which seeds, with repeats)."""
    out: dict[int, dict[float, float]] = {}
    for rank, by_seed in grid.items():
        seeds = sorted(by_seed)
        chosen = pick(rank, seeds) if pick else seeds
        lrs = set.intersection(*(set(by_seed[s]) for s in seeds))
        out[rank] = {lr: float(np.mean([by_seed[s][lr] for s in chosen])) for lr in lrs}
    return out


def best_lr_spearman(grid: SeedGrid, pick: Callable[[int, list[int]], list[int]] | None = None) -> float | None:
    """Spearman correlation between rank and the best learning rate of the seed-mean row of each rank."""
    rows = mean_rows(grid, pick)
    ranks = sorted(rows)
    return spearman(ranks, [argmax_lr(rows[r]) for r in ranks])


def spearman_seed_bootstrap(grid: SeedGrid, n_boot: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of :func:`best_lr_spearman` under a seeded bootstrap over seeds.

    Each draw resamples, for every rank independently, as many seeds as it has (with replacement; the same seeds
    for every learning rate of that rank, since one seed is one data order and one initialisation), averages, takes
    each rank's best learning rate and computes Spearman. A draw where every rank picks the same learning rate has
    no rank order to correlate and counts as 0. None if the point estimate is undefined.
    """
    if best_lr_spearman(grid) is None:
        return None
    rng = np.random.default_rng(seed)

    def pick(_: int, seeds: list[int]) -> list[int]:
        return [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]

    draws = [best_lr_spearman(grid, pick) for _ in range(n_boot)]
    values = np.array([0.0 if d is None else d for d in draws])
    tail = (1 - confidence) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


__all__ = ["PairedDiff", "SeedGrid", "argmax_lr", "best_lr_spearman", "mean_rows", "mean_sd", "paired_t_interval",
           "spearman", "spearman_seed_bootstrap", "steps_to_fraction"]
