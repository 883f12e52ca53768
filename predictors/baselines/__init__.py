"""Simple baselines that recent benchmarks show are hard to beat, as real, saveable predictors.

``baseline.nochange`` (:class:`NoChangeBaseline`), ``baseline.mean`` (:class:`MeanBaseline`),
``baseline.additive`` (:class:`AdditiveBaseline`) and ``baseline.linear`` (:class:`LinearBaseline`, the
linear model of Ahlmann-Eltze, Huber & Anders 2025). All are fitted in closed form from per-context
pseudobulks and predict ``x + delta`` for a batch of control cells ``x``.
"""

from ._model import AdditiveBaseline, LinearBaseline, MeanBaseline, NoChangeBaseline
from ._module import AdditiveBaselineModule, LinearBaselineModule, MeanBaselineModule, NoChangeBaselineModule

__all__ = [
    "AdditiveBaseline",
    "AdditiveBaselineModule",
    "LinearBaseline",
    "LinearBaselineModule",
    "MeanBaseline",
    "MeanBaselineModule",
    "NoChangeBaseline",
    "NoChangeBaselineModule",
]
