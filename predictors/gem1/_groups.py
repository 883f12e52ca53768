"""GEM-1 metadata groups: which obs columns feed the technical, biological and perturbation latent priors.

The groups are declared, not hard-coded (a dict / YAML file mapping 1:1 onto :class:`MetadataGroups`),
for example::

    technical: [bio_rep]            # batch, replicate, library prep ...
    biological: [cell_type]         # cell type / line, tissue ...
    perturbation: [perturbation_type]   # extra categorical perturbation columns
    numeric: [dose, time]           # numeric perturbation features (log1p-transformed)

A group left out (``None``) takes its default from the :class:`~cellgym.predictors.DataSpec`:
technical = ``batch_key``, biological = ``context_key``, numeric = ``dose_key`` and ``time_key``.
The perturbation column itself (``DataSpec.perturbation_key``) always enters the perturbation group as
a multi-hot vector over single perturbations, so that combinations ``A+B`` compose.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from cellgym.predictors.base import DataSpec, DataSpecError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["GROUPS", "MetadataGroups", "MetadataVocab"]

GROUPS: tuple[str, ...] = ("technical", "biological", "perturbation")


@dataclass(frozen=True)
class MetadataGroups:
    """Obs columns of each metadata group (GEM-1's technical / biological / perturbation split).

    Parameters
    ----------
    technical
        Categorical columns of technical variation (batch, replicate, library); default ``[batch_key]``.
    biological
        Categorical columns of biological state (cell type / line); default ``[context_key]``. A linear
        classifier on the biological latent predicts each of them.
    perturbation
        Extra categorical columns of the perturbation group (the perturbation column itself is always
        included as a multi-hot over single perturbations); default none.
    numeric
        Numeric perturbation features (dose, time), fed to the perturbation prior as ``log1p(value)``;
        default ``[dose_key, time_key]`` where the spec sets them.
    """

    technical: tuple[str, ...] | None = None
    biological: tuple[str, ...] | None = None
    perturbation: tuple[str, ...] | None = None
    numeric: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> MetadataGroups:
        """Build from a plain dict (e.g. YAML); unknown keys and non-list values fail clearly."""
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            hints = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
            raise DataSpecError(f"unknown metadata group(s) {unknown}; close matches: {hints}. Valid groups: {names}.")
        out: dict[str, tuple[str, ...] | None] = {}
        for key, value in data.items():
            if value is None:
                out[key] = None
                continue
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise DataSpecError(
                    f"metadata group {key!r} must be a list of obs column names, got {value!r} "
                    f"({type(value).__name__}). Write e.g. {key}: [column_a, column_b]."
                )
            out[key] = tuple(value)
        return cls(**out)

    @classmethod
    def from_yaml(cls, path: str | Path) -> MetadataGroups:
        """Read a YAML file with keys ``technical / biological / perturbation / numeric``."""
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def to_dict(self) -> dict[str, list[str] | None]:
        """YAML-safe dict (inverse of :meth:`from_dict`)."""
        return {k: (list(v) if v is not None else None) for k, v in dataclasses.asdict(self).items()}

    def resolve(self, spec: DataSpec) -> dict[str, tuple[str, ...]]:
        """Concrete column lists: ``technical``, ``biological``, ``perturbation`` (categorical) and ``numeric``."""

        def pick(value: tuple[str, ...] | None, default: Sequence[str | None]) -> tuple[str, ...]:
            return tuple(value) if value is not None else tuple(c for c in default if c is not None)

        return {
            "technical": pick(self.technical, [spec.batch_key]),
            "biological": pick(self.biological, [spec.context_key]),
            "perturbation": pick(self.perturbation, []),
            "numeric": pick(self.numeric, [spec.dose_key, spec.time_key]),
        }


@dataclass
class MetadataVocab:
    """The fitted categories of every metadata column: ``categorical[group][column]`` lists the
    categories in the order of the one-hot columns; ``numeric`` names the numeric columns."""

    categorical: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    numeric: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, obs: pd.DataFrame, groups: MetadataGroups, spec: DataSpec) -> MetadataVocab:
        """Categories from the training cells' ``obs`` (numeric columns are checked to be numeric)."""
        cols = groups.resolve(spec)
        _check_columns(obs, cols, where="the training data")
        categorical = {g: {c: sorted(obs[c].astype(str).unique().tolist()) for c in cols[g]} for g in GROUPS}
        for c in cols["numeric"]:
            _numeric(obs, c)
        return cls(categorical, list(cols["numeric"]))

    def to_dict(self) -> dict[str, Any]:
        """YAML-safe dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetadataVocab:
        """Inverse of :meth:`to_dict`."""
        return cls({g: dict(v) for g, v in data["categorical"].items()}, list(data["numeric"]))

    # ------------------------------------------------------------------------------------------- sizes
    def n_classes(self, group: str) -> list[int]:
        """Number of categories of each categorical column of ``group``."""
        return [len(v) for v in self.categorical[group].values()]

    def width(self, group: str) -> int:
        """Width of a group's categorical one-hot block."""
        return sum(self.n_classes(group))

    # ----------------------------------------------------------------------------------------- encoding
    def codes(self, obs: pd.DataFrame, group: str) -> np.ndarray:
        """Category indices (N, n_columns) int64 of ``group``'s columns; unknown values fail clearly."""
        columns = self.categorical[group]
        _check_columns(obs, {group: tuple(columns)}, where="the prediction input")
        out = np.zeros((len(obs), len(columns)), dtype=np.int64)
        for j, (col, cats) in enumerate(columns.items()):
            values = obs[col].astype(str).to_numpy()
            index = pd.Index(cats)
            idx = index.get_indexer(values)
            if (idx < 0).any():
                unknown = sorted(set(values[idx < 0].tolist()))
                hints = {u: difflib.get_close_matches(u, cats, n=2) for u in unknown[:5]}
                raise DataSpecError(
                    f"unknown value(s) {unknown[:10]} in obs[{col!r}] ({group} metadata group): the model knows "
                    f"{cats[:20]}{' ...' if len(cats) > 20 else ''}; closest: {hints}. Use a known value, or refit "
                    "on data that contains it."
                )
            out[:, j] = idx
        return out

    def one_hot(self, codes: np.ndarray, group: str) -> np.ndarray:
        """Concatenated one-hot (N, width(group)) float32 of :meth:`codes`."""
        out = np.zeros((codes.shape[0], self.width(group)), dtype=np.float32)
        offset = 0
        for j, n in enumerate(self.n_classes(group)):
            out[np.arange(codes.shape[0]), offset + codes[:, j]] = 1.0
            offset += n
        return out

    def numeric_features(self, obs: pd.DataFrame) -> np.ndarray:
        """``log1p`` of the numeric columns, (N, n_numeric) float32."""
        _check_columns(obs, {"numeric": tuple(self.numeric)}, where="the prediction input")
        if not self.numeric:
            return np.zeros((len(obs), 0), dtype=np.float32)
        return np.log1p(np.stack([_numeric(obs, c) for c in self.numeric], axis=1)).astype(np.float32)


def _check_columns(obs: pd.DataFrame, cols: dict[str, tuple[str, ...]], *, where: str) -> None:
    for group, columns in cols.items():
        for c in columns:
            if c not in obs.columns:
                close = difflib.get_close_matches(c, [str(x) for x in obs.columns], n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise DataSpecError(
                    f"obs column {c!r} of the {group} metadata group is missing from {where}; columns are "
                    f"{list(obs.columns)[:20]}.{hint} Fix the column or the `groups` declaration."
                )
            if obs[c].isna().any():
                raise DataSpecError(
                    f"obs[{c!r}] ({group} metadata group) has {int(obs[c].isna().sum())} missing value(s) in {where}; "
                    "every sample needs a value."
                )


def _numeric(obs: pd.DataFrame, column: str) -> np.ndarray:
    try:
        v = pd.to_numeric(obs[column]).to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        examples = obs[column].astype(str).unique()[:5].tolist()
        raise DataSpecError(
            f"obs[{column!r}] is declared a numeric perturbation feature but holds non-numeric values, e.g. "
            f"{examples}. Declare it under `perturbation` (categorical) in the metadata groups instead."
        ) from exc
    if (v < 0).any() or not np.isfinite(v).all():
        raise DataSpecError(f"obs[{column!r}] (numeric perturbation feature) must be finite and >= 0 (dose, time).")
    return v
