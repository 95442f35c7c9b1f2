"""Statistics of the protocol table: chance levels, the binomial test, mean ± spread."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import binom


def chance_level(label_counts: Sequence[int], num_choices: int) -> float:
    """Accuracy of the best constant guess: 1 / ``num_choices`` on a balanced test set, the share of
    its most frequent class otherwise (an imbalanced test set must not pass for leakage)."""
    total = sum(label_counts)
    if num_choices < 1 or total < 1:
        raise ValueError(f"chance needs at least one choice and one trial, got {num_choices} and {total}")
    return max(1 / num_choices, max(label_counts) / total)


def binomial_p_value(successes: int, trials: int, chance: float) -> float:
    """One-sided P(X >= successes) for X ~ Binomial(trials, chance): how likely guessing at
    ``chance`` scores at least this well. Trials are taken as independent."""
    if not 0 <= successes <= trials or not 0 < chance < 1:
        raise ValueError(f"need 0 <= successes <= trials and 0 < chance < 1, got {successes}, {trials}, {chance}")
    return float(binom.sf(successes - 1, trials, chance))


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0 for a single value), e.g. over LOSO folds."""
    if not values:
        raise ValueError("mean_and_spread needs at least one value")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
