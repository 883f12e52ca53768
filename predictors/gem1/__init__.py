"""GEM-1 predictors (Synthesize Bio, bioRxiv 2025.09.08.674753): metadata-conditioned VAEs with technical,
biological and perturbation latent blocks; registered as ``gem1.bulk``, ``gem1.nb``, ``gem1.sc`` and the
reward model ``gem1.classifier``."""

from ._groups import MetadataGroups, MetadataVocab
from ._model import TASKS, Gem1Base, Gem1Bulk, Gem1NB, Gem1SC
from ._module import Gem1Module
from ._reward import Gem1ClassifierReward

__all__ = [
    "TASKS",
    "Gem1Base",
    "Gem1Bulk",
    "Gem1ClassifierReward",
    "Gem1Module",
    "Gem1NB",
    "Gem1SC",
    "MetadataGroups",
    "MetadataVocab",
]
