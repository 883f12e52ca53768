"""Galaxy (SATURN successor; Rosen et al., SATURN, Nature Methods 2024): cross-species integration through
macrogenes built from protein and text gene embeddings, perturbation transfer between species, and
cross-species cell-type trees. Registered as the predictor ``galaxy`` and the reward ``galaxy.embedding``."""

from ._evaluate import concat_pca, label_transfer_accuracy, ortholog_pca, species_entropy
from ._macrogenes import MODALITIES, MacrogeneError, Macrogenes, build_macrogenes, rank_weights
from ._model import GalaxyPredictor
from ._module import GalaxyModule, GradientReversal
from ._reward import GalaxyEmbeddingReward
from ._testbed import TwoSpecies, pca_gene_embeddings, two_species
from ._tree import CellTypeTree, celltype_tree

__all__ = [
    "MODALITIES",
    "CellTypeTree",
    "GalaxyEmbeddingReward",
    "GalaxyModule",
    "GalaxyPredictor",
    "GradientReversal",
    "MacrogeneError",
    "Macrogenes",
    "TwoSpecies",
    "build_macrogenes",
    "celltype_tree",
    "concat_pca",
    "label_transfer_accuracy",
    "ortholog_pca",
    "pca_gene_embeddings",
    "rank_weights",
    "species_entropy",
    "two_species",
]
