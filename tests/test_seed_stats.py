"""lorafa_repro.stats (issue #20): each statistic on data where its plausible wrong twin gives another number."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats as sps

from lorafa_repro.stats import (best_lr_spearman, mean_sd, paired_t_interval, spearman, spearman_seed_bootstrap,
                                steps_to_fraction)


def test_mean_sd_is_the_sample_sd_not_the_se_or_population_sd() -> None:
    values = [80.0, 82.0, 85.0, 81.0]
    mean, sd = mean_sd(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert sd == pytest.approx(statistics.stdev(values))  # ddof = 1
    assert sd != pytest.approx(statistics.pstdev(values)) and sd != pytest.approx(sd / 2)  # not pop. sd, not se
    assert math.isnan(mean_sd([1.0])[1])


def test_paired_interval_matches_scipy_and_differs_from_the_unpaired_one() -> None:
    # seeds move both methods together (80 / 70 / 90 / 60), the difference is steady (about -1.4)
    lora = {0: 80.0, 1: 70.0, 2: 90.0, 3: 60.0, 7: 99.0}  # seed 7 has no LoRA-FA partner: left out
    lora_fa = {0: 79.0, 1: 68.0, 2: 88.5, 3: 58.8}
    got = paired_t_interval(lora_fa, lora)
    seeds = [0, 1, 2, 3]
    ref = sps.ttest_rel([lora_fa[s] for s in seeds], [lora[s] for s in seeds]).confidence_interval(0.95)
    assert got.n == 4 and got.mean == pytest.approx(-1.425)
    assert (got.low, got.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert got.high < 0  # paired: the steady loss is significant
    unpaired = sps.ttest_ind([lora_fa[s] for s in seeds], [lora[s] for s in seeds]).confidence_interval(0.95)
    assert unpaired.low < 0 < unpaired.high  # the unpaired twin cannot see it
    assert math.isnan(paired_t_interval({0: 1.0}, {0: 2.0}).low)


def test_spearman_is_rank_based_not_pearson() -> None:
    ranks = [1, 2, 4, 8, 16]
    best_lr = [1e-1, 8e-4, 4e-4, 2e-4, 1e-4]  # falls monotonically, far from linearly
    assert spearman(ranks, best_lr) == pytest.approx(-1.0)
    assert sps.pearsonr(ranks, best_lr).statistic > -0.8
    assert spearman(ranks[:2], best_lr[:2]) is None and spearman(ranks, [1e-3] * 5) is None


def test_steps_to_fraction_of_the_final_score() -> None:
    curve = {50: 0.50, 100: 0.80, 150: 0.86, 200: 0.90}
    assert steps_to_fraction(curve, final=0.90, fraction=0.95) == 150  # 0.855 first reached at 150
    # 85% of the final score (0.765) is reached at 100; 85% of the way from the first score (0.84) only at 150
    assert steps_to_fraction(curve, final=0.90, fraction=0.85) == 100
    assert steps_to_fraction(curve, final=0.90, fraction=1.01) is None


def _grid(seed_rows: dict[int, list[list[float]]], lrs=(1e-3, 2e-3, 4e-3)):
    """rank -> seed -> lr -> score from rank -> [one row of scores per seed]."""
    return {r: {s: dict(zip(lrs, row)) for s, row in enumerate(rows)} for r, rows in seed_rows.items()}


def test_seed_bootstrap_is_degenerate_when_seeds_agree_and_wide_when_they_do_not() -> None:
    agree = _grid({1: [[1, 2, 3], [1, 2, 3]], 4: [[1, 3, 2], [1, 3, 2]], 16: [[3, 2, 1], [3, 2, 1]]})
    assert best_lr_spearman(agree) == pytest.approx(-1.0)  # best lrs 4e-3, 2e-3, 1e-3 at ranks 1, 4, 16
    assert spearman_seed_bootstrap(agree, n_boot=200) == (pytest.approx(-1.0), pytest.approx(-1.0))
    # seed 0 says the best lr falls with the rank, seed 1 that it rises: the mean hides it, the bootstrap shows it
    split = _grid({1: [[0, 0, 9], [9, 0, 0]], 4: [[0, 9, 0], [0, 9, 0]], 16: [[9, 0, 0], [0, 0, 9]]})
    low, high = spearman_seed_bootstrap(split, n_boot=400)
    assert low == pytest.approx(-1.0) and high == pytest.approx(1.0)
    assert spearman_seed_bootstrap(split, n_boot=400) == (low, high)  # seeded: reproducible
