"""Per-modality preprocessing for the CellTRIP world: fitted once, applied to any cells, invertible.

A :class:`Modality` turns raw features into the float32 matrix the world works with and back:

- ``counts``   : total-count normalisation (to the median total), log1p, standardisation, PCA;
- ``log1p``    : (already normalised expression) standardisation, PCA;
- ``features`` : standardisation, PCA when wider than ``n_pcs``;
- ``spatial``  : centring and one global scale (shape kept, so it can be fitted up to rotation + translation).

Every kind is then divided by one scalar so that the mean distance between two cells is 1: distance
matching compares each modality's distances with the environment's on the same scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from cellgym.predictors.base.errors import DataSpecError

ModalityKind = Literal["counts", "log1p", "features", "spatial"]
KINDS: tuple[str, ...] = ("counts", "log1p", "features", "spatial")


def infer_kind(x: np.ndarray) -> ModalityKind:
    """Guess a modality's kind: <= 3 columns is spatial, non-negative integers are counts, else features."""
    if x.shape[1] <= 3:
        return "spatial"
    sample = x[: min(len(x), 500)]
    if np.all(sample >= 0) and np.allclose(sample, np.round(sample)):
        return "counts"
    return "features"


@dataclass
class Modality:
    """A fitted preprocessing of one modality (all tensors float32 on CPU).

    Attributes
    ----------
    name, kind
        The modality's name and :data:`ModalityKind`.
    n_raw
        Number of raw features F_raw.
    target_sum
        Total count each cell is normalised to (``counts`` only, else 0).
    mean, std : Tensor of shape (F_raw,)
        Standardisation (for ``spatial``: the centre, and one global scale repeated).
    components : Tensor of shape (F_raw, F) or None
        PCA loadings (orthonormal columns); None keeps the standardised features.
    scale
        Divides the processed features so that the mean pairwise distance is 1.
    """

    name: str
    kind: ModalityKind
    n_raw: int
    target_sum: float
    mean: torch.Tensor
    std: torch.Tensor
    components: torch.Tensor | None
    scale: float

    @property
    def n_features(self) -> int:
        """F, the processed width."""
        return self.n_raw if self.components is None else int(self.components.shape[1])

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw (N, F_raw) -> normalised, log1p (counts) feature space (N, F_raw); identity otherwise."""
        raw = raw.float()
        if self.kind == "counts":
            total = raw.sum(1, keepdim=True).clamp_min(1.0)
            return torch.log1p(raw * (self.target_sum / total))
        return raw

    def transform(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw features (N, F_raw) -> processed features (N, F)."""
        return self.from_normalised(self.normalise(raw))

    def from_normalised(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised features (N, F_raw) -> processed (N, F): the part after count normalisation."""
        z = (z - self.mean) / self.std
        if self.components is not None:
            z = z @ self.components
        return z / self.scale

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Processed features (N, F) -> normalised feature space (N, F_raw) (log1p expression, coordinates)."""
        y = y * self.scale
        if self.components is not None:
            y = y @ self.components.T
        return y * self.std + self.mean

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors for a ``weights_only`` checkpoint."""
        out = {"mean": self.mean, "std": self.std, "scale": torch.tensor(self.scale),
               "target_sum": torch.tensor(self.target_sum)}
        if self.components is not None:
            out["components"] = self.components
        return out

    @classmethod
    def from_state_dict(cls, name: str, kind: ModalityKind, state: dict[str, torch.Tensor]) -> Modality:
        """Rebuild a modality saved with :meth:`state_dict`."""
        return cls(name, kind, int(state["mean"].shape[0]), float(state["target_sum"]), state["mean"],
                   state["std"], state.get("components"), float(state["scale"]))


def fit_modality(x: np.ndarray, kind: ModalityKind, *, name: str, n_pcs: int = 64,
                 seed: int = 0) -> Modality:
    """Fit the preprocessing of one modality on cells ``x`` (N, F_raw).

    Parameters
    ----------
    x : array of shape (N, F_raw)
        Raw counts (``counts``), normalised log1p expression (``log1p``), any features, or coordinates.
    kind
        One of :data:`KINDS`.
    n_pcs
        PCA width for expression-like kinds (kept features when the modality is narrower).
    seed
        Seeds the subsample of pairs used for the distance scale.
    """
    if kind not in KINDS:
        raise DataSpecError(f"modality {name!r} has kind {kind!r}; expected one of {list(KINDS)}.")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise DataSpecError(f"modality {name!r} must be a 2-D array of at least 2 cells; got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise DataSpecError(f"modality {name!r} has non-finite values; remove or impute them first.")
    if kind == "counts" and np.any(x < 0):
        raise DataSpecError(f"modality {name!r} is declared 'counts' but has negative values; "
                            "pass kind='log1p' or 'features'.")
    raw = torch.from_numpy(x)
    target_sum = float(np.median(x.sum(1))) if kind == "counts" else 0.0
    if kind == "counts" and target_sum <= 0:
        raise DataSpecError(f"modality {name!r}: the median total count is 0; these are not counts.")
    mod = Modality(name, kind, x.shape[1], target_sum, torch.zeros(x.shape[1]), torch.ones(x.shape[1]),
                   None, 1.0)
    z = mod.normalise(raw)
    if kind == "spatial":
        mod.mean = z.mean(0)
        rms = float((z - mod.mean).pow(2).sum(1).mean().sqrt())
        mod.std = torch.full((x.shape[1],), max(rms, 1e-8))
    else:
        mod.mean = z.mean(0)
        mod.std = z.std(0).clamp_min(1e-6)
        if x.shape[1] > n_pcs:
            zs = (z - mod.mean) / mod.std
            # Right singular vectors of the standardised matrix are the PCA loadings.
            _, _, vh = torch.linalg.svd(zs, full_matrices=False)
            mod.components = vh[:n_pcs].T.contiguous()
    y = mod.from_normalised(z)
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(len(y), (4096,), generator=gen)
    j = torch.randint(len(y), (4096,), generator=gen)
    mod.scale = float((y[i] - y[j]).norm(dim=1).mean().clamp_min(1e-8))
    return mod
