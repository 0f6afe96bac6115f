"""Statistics for the study: paired comparisons of two models over seeds and test images
(:mod:`.paired`), learning curves with a seed bootstrap (:mod:`.curves`), and whether a training
run was still improving when it stopped (:mod:`.convergence`).

Torch-free and the lowest layer: it imports nothing of cnnvit, so every part of it may use it.
The tests and fits are scipy's and statsmodels'.
"""

from cnnvit.stats.convergence import RULE as CONVERGENCE_RULE
from cnnvit.stats.convergence import Convergence, still_improving
from cnnvit.stats.curves import (
    MAX_EXTRAPOLATION,
    Crossover,
    CurveComparison,
    CurveFit,
    Match,
    ModelCurve,
    bootstrap_curves,
    crossover,
    fit_curve,
    images_to_match,
)
from cnnvit.stats.paired import RULE as DECISION_RULE
from cnnvit.stats.paired import (
    McNemarResult,
    PairedDifference,
    SizeComparison,
    SizeVerdict,
    compare_at_size,
    decide,
    holm,
    paired_difference,
    pooled_mcnemar,
    seeds_needed,
    sentence,
)

__all__ = [
    "CONVERGENCE_RULE",
    "DECISION_RULE",
    "MAX_EXTRAPOLATION",
    "Convergence",
    "Crossover",
    "CurveComparison",
    "CurveFit",
    "Match",
    "McNemarResult",
    "ModelCurve",
    "PairedDifference",
    "SizeComparison",
    "SizeVerdict",
    "bootstrap_curves",
    "compare_at_size",
    "crossover",
    "decide",
    "fit_curve",
    "holm",
    "images_to_match",
    "paired_difference",
    "pooled_mcnemar",
    "seeds_needed",
    "sentence",
    "still_improving",
]
