"""The data contract: which obs columns mean what, how to validate an AnnData, and reproducible splits."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import DataSpecError, UnknownPerturbationError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "DataSpec",
    "Split",
    "SplitKind",
    "expression",
    "is_count_matrix",
    "perturbation_genes",
    "split",
    "target_gene",
    "validate",
]

SplitKind = Literal["perturbations", "combos", "contexts", "fewshot", "random"]
SPLIT_KINDS: tuple[str, ...] = ("perturbations", "combos", "contexts", "fewshot", "random")
TARGET_SUM = 1e4  # counts are normalised to this library size before log1p (scanpy's convention)


@dataclass(frozen=True)
class DataSpec:
    """Which columns of an AnnData carry which meaning.

    Parameters
    ----------
    perturbation_key
        ``obs`` column with the perturbation of each cell; combinations are written ``"A+B"``.
    control
        The label of unperturbed (control) cells in that column.
    separator
        Separator of combined perturbations.
    context_key
        ``obs`` column with the cell type or cell line, or None when the data has one context.
    batch_key, dose_key, time_key, species_key
        Optional ``obs`` columns (technical batch, dose, time, species).
    counts
        Where raw counts live: ``"X"``, the name of a layer, ``None`` when the data holds no counts
        (``X`` is log1p-normalised), or ``"auto"`` to detect it (``layers['counts']`` if present, else
        ``X`` when it holds non-negative integers, else no counts).
    """

    perturbation_key: str = "perturbation"
    control: str = "control"
    separator: str = "+"
    context_key: str | None = None
    batch_key: str | None = None
    dose_key: str | None = None
    time_key: str | None = None
    species_key: str | None = None
    counts: str | None = "auto"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        """Inverse of :meth:`to_dict`; unknown keys fail with the close matches."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            hints = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
            raise DataSpecError(f"unknown DataSpec field(s) {unknown}; close matches: {hints}. Valid: {sorted(names)}.")
        return cls(**data)

    def obs_keys(self) -> dict[str, str]:
        """The declared obs columns, by field name."""
        fields = ("perturbation_key", "context_key", "batch_key", "dose_key", "time_key", "species_key")
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}

    def split_label(self, label: str) -> list[str]:
        """``"A+B"`` -> ``["A", "B"]``; the control label -> ``[]``."""
        if label == self.control:
            return []
        return [p for p in str(label).split(self.separator) if p and p != self.control]


@dataclass(frozen=True)
class Split:
    """Cell indices of a train/test split and what was held out."""

    kind: str
    train: np.ndarray  # int64 indices into adata.obs
    test: np.ndarray
    holdout: tuple[str, ...]  # held-out perturbations or contexts ("" for random)
    seed: int | None


# ----------------------------------------------------------------------------------------------- checks
def read_h5ad(path: str | Path, *, what: str = "--data") -> AnnData:
    """Read an ``.h5ad`` file; a folder, a missing file or an unreadable one raises :class:`DataSpecError`
    in one line, ``what`` naming the option or argument the path came from."""
    import anndata

    file = Path(path)
    if file.is_dir():
        found = sorted(p.name for p in file.glob("*.h5ad"))[:5]
        raise DataSpecError(f"{what} {str(path)!r} is a folder, not a file. Pass the path of an .h5ad file"
                            + (f", e.g. one of {found} in it." if found else " (the folder holds none)."))
    if not file.is_file():
        raise DataSpecError(f"{what} {str(path)!r}: no such file. Pass the path of an .h5ad file.")
    try:
        return anndata.read_h5ad(file)
    except Exception as exc:  # h5py/anndata raise many types for a file that is not an AnnData
        raise DataSpecError(f"{what} {str(path)!r} is not a readable .h5ad file ({type(exc).__name__}: {exc}).") from exc


def is_count_matrix(x: Any, n_check: int = 100_000) -> bool:
    """True when ``x`` holds non-negative integers (raw counts) rather than normalised/log values."""
    data = x.data if sp.issparse(x) else np.asarray(x).ravel()
    data = np.asarray(data[:n_check], dtype=np.float64)
    if data.size == 0:
        return False
    return bool(np.all(data >= 0) and np.all(np.isfinite(data)) and np.all(data == np.round(data)))


def _first_negative(adata: AnnData, x: Any) -> str:
    """Where the first negative entry of ``x`` (cells x genes) is: value, cell name and gene name."""
    if sp.issparse(x):
        coo = x.tocoo()
        k = int(np.flatnonzero(coo.data < 0)[0])
        row, col, value = int(coo.row[k]), int(coo.col[k]), coo.data[k]
    else:
        row, col = (int(i) for i in np.argwhere(np.asarray(x) < 0)[0])
        value = np.asarray(x)[row, col]
    return f"{value:g} at cell {str(adata.obs_names[row])!r} (row {row}), gene {str(adata.var_names[col])!r} (column {col})"


def _negative_integers(x: Any, n_check: int = 100_000) -> int:
    """The number of negative entries of ``x`` when its values look like integers (counts), else 0."""
    data = x.data if sp.issparse(x) else np.asarray(x).ravel()
    sample = np.asarray(data[:n_check], dtype=np.float64)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0 or not np.all(finite == np.round(finite)):
        return 0
    negative = np.asarray(data)[np.asarray(data) < 0]
    return int(negative.size) if np.all(negative == np.round(negative)) else 0


def _counts_matrix(adata: AnnData, spec: DataSpec) -> Any | None:
    """The raw-count matrix the spec points at, or None."""
    if spec.counts is None:
        return None
    if spec.counts == "auto":
        if "counts" in adata.layers:
            return adata.layers["counts"]
        if is_count_matrix(adata.X):
            return adata.X
        n_negative = _negative_integers(adata.X)
        if n_negative:  # integer counts with a bad entry: never silently read as log-expression
            raise DataSpecError(
                f"adata.X holds integers (raw counts, for DataSpec.counts='auto') but {n_negative} negative value(s), "
                f"first {_first_negative(adata, adata.X)}; counts cannot be negative. Fix or drop those cells, or "
                "pass counts=None (--counts none) if X is not counts."
            )
        return None
    if spec.counts == "X":
        return adata.X
    if spec.counts not in adata.layers:
        raise DataSpecError(
            f"adata.layers has no layer {spec.counts!r} (DataSpec.counts); layers are {list(adata.layers)}. "
            "Pass counts='X' when X holds the counts, or counts=None for log-normalised data."
        )
    return adata.layers[spec.counts]


def _layer_name(adata: AnnData, matrix: Any) -> str:
    return next((k for k, v in adata.layers.items() if v is matrix), "?")


def has_counts(adata: AnnData, spec: DataSpec) -> bool:
    """Whether the spec resolves to raw counts on this AnnData."""
    return _counts_matrix(adata, spec) is not None


def _finite_check(x: Any, where: str) -> None:
    data = x.data if sp.issparse(x) else np.asarray(x)
    bad = ~np.isfinite(data)
    if bad.any():
        raise DataSpecError(
            f"{where} holds {int(bad.sum())} non-finite value(s) (NaN or inf); expression must be finite. "
            "Remove or impute them first, e.g. adata = adata[np.isfinite(adata.X.sum(1))]."
        )


def validate(
    adata: AnnData,
    spec: DataSpec,
    *,
    perturbations: Iterable[str] | None = None,
    genes: Sequence[str] | None = None,
    require_counts: bool = False,
    require_control: bool = True,
) -> None:
    """Check an AnnData against a spec before any work starts; raise a clear error on the first problem.

    Parameters
    ----------
    adata
        The data.
    spec
        Which columns mean what.
    perturbations
        A known vocabulary of single perturbations (a fitted predictor's); names outside it are rejected.
    genes
        Genes the data must have, in order (a fitted predictor's); a mismatch is rejected.
    require_counts
        Reject data without raw counts (count-likelihood models need them).
    require_control
        Reject data without control cells (every context with perturbed cells needs controls).

    Raises
    ------
    DataSpecError, UnknownPerturbationError, GeneMismatchError
    """
    if adata.n_vars == 0 and adata.raw is not None and adata.raw.n_vars > 0:
        raise DataSpecError(
            f"adata.X has 0 genes but adata.raw holds {adata.raw.n_vars}: the genes live only in .raw. Use "
            "adata = adata.raw.to_adata() (keeps obs), then pass that."
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DataSpecError(f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); pass data with cells and genes.")
    names = pd.Index(adata.var_names)
    if names.has_duplicates:
        dups = names[names.duplicated()].unique().tolist()
        raise DataSpecError(
            f"adata.var_names has {len(dups)} duplicated gene name(s), e.g. {dups[:5]}; gene names must be unique. "
            "Call adata.var_names_make_unique() or aggregate the duplicates."
        )
    for field, column in spec.obs_keys().items():
        if column not in adata.obs.columns:
            close = difflib.get_close_matches(column, adata.obs.columns.astype(str), n=1)
            hint = f" Did you mean {close[0]!r}? Pass {field}={close[0]!r}." if close else f" Pass {field}=<column>."
            raise DataSpecError(
                f"adata.obs has no column {column!r} (DataSpec.{field}); columns are {list(adata.obs.columns)}.{hint}"
            )
        if adata.obs[column].isna().any():
            n = int(adata.obs[column].isna().sum())
            raise DataSpecError(
                f"adata.obs[{column!r}] (DataSpec.{field}) has {n} missing value(s); every cell needs a value. "
                "Fill them or drop those cells."
            )
    if genes is not None and list(genes) != list(adata.var_names):
        check_genes(genes, adata.var_names)
    _finite_check(adata.X, "adata.X")
    counts = _counts_matrix(adata, spec)
    if counts is not None:
        where = "adata.X" if counts is adata.X else f"adata.layers[{_layer_name(adata, counts)!r}]"
        if counts is not adata.X:
            _finite_check(counts, where)
        data = counts.data if sp.issparse(counts) else np.asarray(counts)
        if (data < 0).any():
            raise DataSpecError(
                f"the counts in {where} (DataSpec.counts={spec.counts!r}) hold {int((data < 0).sum())} negative "
                f"value(s), first {_first_negative(adata, counts)}; raw counts must be >= 0. Pass counts=None if "
                "this is normalised or scaled data."
            )
    if require_counts and counts is None:
        raise DataSpecError(
            "this model needs raw counts, but the data holds none: adata.X is not integer-valued (it looks "
            "log-normalised) and there is no layers['counts']. Put raw UMI counts in adata.layers['counts'] "
            "(DataSpec.counts='counts') or use a model for log data (e.g. gem1.bulk, baseline.*)."
        )
    labels = adata.obs[spec.perturbation_key].astype(str)
    is_control = labels == spec.control
    unique_labels = labels.unique().tolist()
    empty = [lab for lab in unique_labels if lab != spec.control and not spec.split_label(lab)]
    if empty:
        n = int(labels.isin(empty).sum())
        raise DataSpecError(
            f"adata.obs[{spec.perturbation_key!r}] has {n} cell(s) whose label names no perturbation: {empty[:5]} "
            f"(empty, or only the separator {spec.separator!r}); they would silently count as controls. Label them "
            f"{spec.control!r} if they are controls, or drop them."
        )
    if require_control and not is_control.any():
        values = labels.value_counts().index[:5].tolist()
        close = difflib.get_close_matches(spec.control, labels.unique().tolist(), n=1)
        hint = f" Did you mean control={close[0]!r}?" if close else " Pass control=<label of unperturbed cells>."
        raise DataSpecError(
            f"no control cells: adata.obs[{spec.perturbation_key!r}] has no value {spec.control!r} (DataSpec.control); "
            f"most common values are {values}.{hint}"
        )
    if require_control and spec.context_key is not None:
        ctx = adata.obs[spec.context_key].astype(str)
        without = sorted(set(ctx[~is_control]) - set(ctx[is_control]))
        if without:
            raise DataSpecError(
                f"context(s) {without} in adata.obs[{spec.context_key!r}] have perturbed cells but no control cells, "
                "so their responses cannot be predicted from controls. Add their controls or drop those cells."
            )
    if perturbations is not None:
        known = set(perturbations)
        singles = perturbation_genes(labels.unique(), spec)
        unknown = sorted(set(singles) - known)
        if unknown:
            raise unknown_perturbation_error(unknown, known)


def unknown_perturbation_error(unknown: Sequence[str], known: Iterable[str]) -> UnknownPerturbationError:
    """An :class:`UnknownPerturbationError` naming the unknown names and the closest known ones."""
    known = sorted(known)
    hints = {u: difflib.get_close_matches(u, known, n=3) for u in unknown[:5]}
    return UnknownPerturbationError(
        f"unknown perturbation(s) {list(unknown)[:10]}{' ...' if len(unknown) > 10 else ''}: not among the "
        f"{len(known)} known ({known[:10]}{' ...' if len(known) > 10 else ''}). Closest known: {hints}. "
        "Use a known name, or fit the predictor on data that contains it."
    )


def check_genes(expected: Sequence[str], got: Sequence[str]) -> None:
    """Raise :class:`GeneMismatchError` unless ``got`` equals ``expected`` (same genes, same order)."""
    from .errors import GeneMismatchError

    expected, got = list(expected), list(got)
    if expected == got:
        return
    missing = [g for g in expected if g not in set(got)]
    extra = [g for g in got if g not in set(expected)]
    if not missing and not extra:
        raise GeneMismatchError(
            f"genes are the same {len(expected)} but in another order. Reorder with adata = adata[:, genes]."
        )
    raise GeneMismatchError(
        f"gene mismatch: expected the {len(expected)} genes the model was fitted on, got {len(got)}; "
        f"{len(missing)} missing (first: {missing[:5]}), {len(extra)} unexpected (first: {extra[:5]}). "
        "Subset the data to the model's genes (adata[:, model.genes]) or refit on this gene set."
    )


def perturbation_genes(labels: Iterable[str], spec: DataSpec) -> list[str]:
    """Sorted single perturbations named in ``labels`` (combinations split, control removed)."""
    out: set[str] = set()
    for label in labels:
        out.update(spec.split_label(str(label)))
    return sorted(out)


#: label suffixes that name a perturbation of a gene (``G3_KO``), and the direction each moves the gene
PERTURBATION_KINDS: dict[str, float] = {"KO": -1.0, "KD": -1.0, "CRISPRi": -1.0, "OE": 1.0, "CRISPRa": 1.0}


def target_gene(single: str, genes: Iterable[str]) -> tuple[str | None, float]:
    """``(gene, sign)``: the measured gene a single perturbation targets, and its direction.

    A label that is itself a measured gene (Norman19's ``"TMSB4X"``) targets that gene with sign +1; a
    label ``GENE_KIND`` with ``KIND`` in :data:`PERTURBATION_KINDS` (the GRN screens' ``"G3_KO"``,
    ``"Gata1_OE"``) targets ``GENE`` with the kind's sign (-1 for a loss of function, +1 for a gain).
    Anything else (a target that is not measured, a drug) gives ``(None, 0.0)``.
    """
    names = genes if isinstance(genes, (set, dict, frozenset)) else set(genes)
    if single in names:
        return single, 1.0
    gene, _, kind = str(single).rpartition("_")
    if gene in names and kind in PERTURBATION_KINDS:
        return gene, PERTURBATION_KINDS[kind]
    return None, 0.0


def expression(adata: AnnData, spec: DataSpec) -> np.ndarray:
    """Dense float32 log1p-normalised expression, shape (N, G).

    Raw counts (where the spec finds them) are normalised to 1e4 per cell and log1p-transformed, as
    ``scanpy.pp.normalize_total`` + ``scanpy.pp.log1p`` do; otherwise ``X`` is taken as log1p already.
    """
    counts = _counts_matrix(adata, spec)
    if counts is None:
        x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
        return np.asarray(x, dtype=np.float32)
    c = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    c = np.asarray(c, dtype=np.float64)
    lib = c.sum(1, keepdims=True)
    lib[lib == 0] = 1.0
    return np.log1p(c / lib * TARGET_SUM).astype(np.float32)


def raw_counts(adata: AnnData, spec: DataSpec) -> np.ndarray | None:
    """Dense float32 raw counts (N, G), or None when the data has none."""
    counts = _counts_matrix(adata, spec)
    if counts is None:
        return None
    c = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    return np.asarray(c, dtype=np.float32)


# ----------------------------------------------------------------------------------------------- splits
def _n_held_out(fraction: float, n: int) -> int:
    """``fraction * n`` rounded half up (not Python's half-to-even: 0.5 of 5 combos is 3), at least 1."""
    return max(1, int(np.floor(fraction * n + 0.5)))


def _pick(values: Sequence[str], fraction: float, rng: np.random.Generator) -> list[str]:
    values = sorted(values)
    n = _n_held_out(fraction, len(values))
    return sorted(rng.choice(values, size=min(n, len(values)), replace=False).tolist())


def split(
    adata: AnnData,
    spec: DataSpec,
    kind: SplitKind,
    seed: int | None = 0,
    *,
    holdout: Sequence[str] | None = None,
    test_fraction: float | None = None,
) -> Split:
    """Reproducible train/test split of cells.

    Parameters
    ----------
    kind
        ``"perturbations"``: whole perturbations (single or combined) are held out.
        ``"combos"``: combinations ``A+B`` whose singles ``A`` and ``B`` both stay in training are held out.
        ``"contexts"``: the perturbed cells of whole contexts (cell types / lines) are held out; their
        control cells stay in training as the input to predict from (scGen's held-out cell-type benchmark).
        ``"fewshot"``: within one context (``holdout``, or a seeded random one), a ``test_fraction`` of its
        perturbations is held out, choosing only perturbations other contexts measured (they stay in
        training there); the context's other perturbations stay in training (State's few-shot setting,
        Adduri et al. 2025). ``Split.holdout`` lists ``"context/perturbation"``.
        ``"random"``: a random fraction of the perturbed cells.
    seed
        Seed of the random choice; the same (adata, spec, kind, seed) gives the same split.
    holdout
        The perturbation labels or contexts to hold out, instead of a random choice (``"fewshot"``: the
        one context).
    test_fraction
        Fraction of eligible perturbations / contexts / cells held out when ``holdout`` is None
        (rounded half up, at least one). Default: 0.5 for ``"combos"`` (combinations are few and their
        singles stay in training, so half of them are held out; 3 of the 5 eligible in Norman 2019's
        devel subset), 0.3 otherwise.

    Control cells always stay in training: they are every predictor's input, never a target.
    """
    if kind not in SPLIT_KINDS:
        raise DataSpecError(f"unknown split kind {kind!r}; expected one of {list(SPLIT_KINDS)}.")
    if test_fraction is None:
        test_fraction = 0.5 if kind == "combos" else 0.3
    if not 0.0 < test_fraction < 1.0:
        raise DataSpecError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    rng = np.random.default_rng(seed)
    labels = adata.obs[spec.perturbation_key].astype(str).to_numpy()
    is_control = labels == spec.control
    idx = np.arange(adata.n_obs)
    perturbed = sorted(set(labels[~is_control]))

    if kind == "random":
        cand = idx[~is_control]
        if cand.size == 0:
            raise DataSpecError("split kind 'random' needs perturbed cells; the data holds only controls.")
        test = np.sort(rng.choice(cand, size=_n_held_out(test_fraction, cand.size), replace=False))
        train = np.setdiff1d(idx, test)
        return Split(kind, train, test, ("",), seed)

    if kind == "contexts":
        if spec.context_key is None:
            raise DataSpecError("split kind 'contexts' needs DataSpec.context_key (the cell type / line column).")
        ctx = adata.obs[spec.context_key].astype(str).to_numpy()
        contexts = sorted(set(ctx[~is_control]))
        chosen = _check_holdout(holdout, contexts, "context") if holdout else _pick(contexts, test_fraction, rng)
        if len(chosen) == len(contexts):
            raise DataSpecError(f"cannot hold out every context {contexts}: nothing would be left to learn from.")
        test_mask = np.isin(ctx, chosen) & ~is_control
        return Split(kind, idx[~test_mask], idx[test_mask], tuple(chosen), seed)

    if kind == "fewshot":
        return _fewshot(adata, spec, labels, is_control, holdout, test_fraction, rng, seed)

    if kind == "perturbations":
        eligible = perturbed
        if len(eligible) < 2:
            raise DataSpecError(
                f"split kind 'perturbations' needs at least 2 perturbations in adata.obs[{spec.perturbation_key!r}], "
                f"found {eligible}: one to hold out and one to learn from."
            )
    else:  # combos
        singles_present = {p for p in perturbed if len(spec.split_label(p)) == 1}
        combos = [p for p in perturbed if len(spec.split_label(p)) > 1]
        if not combos:
            raise DataSpecError(
                f"split kind 'combos' needs combined perturbations written 'A{spec.separator}B' in "
                f"adata.obs[{spec.perturbation_key!r}]; none found. Use split='perturbations'."
            )
        eligible = [c for c in combos if all(s in singles_present for s in spec.split_label(c))]
        if not eligible:
            raise DataSpecError("no combination has all its single perturbations measured; cannot hold out combos.")
    chosen = _check_holdout(holdout, eligible, "perturbation") if holdout else _pick(eligible, test_fraction, rng)
    if kind == "perturbations" and len(chosen) == len(eligible):
        raise DataSpecError("cannot hold out every perturbation: nothing would be left to learn from.")
    test_mask = np.isin(labels, chosen)
    return Split(kind, idx[~test_mask], idx[test_mask], tuple(chosen), seed)


def _fewshot(
    adata: AnnData, spec: DataSpec, labels: np.ndarray, is_control: np.ndarray, holdout: Sequence[str] | None,
    test_fraction: float, rng: np.random.Generator, seed: int | None,
) -> Split:
    """The ``"fewshot"`` split (see :func:`split`)."""
    if spec.context_key is None:
        raise DataSpecError("split kind 'fewshot' needs DataSpec.context_key (the cell type / line column).")
    ctx = adata.obs[spec.context_key].astype(str).to_numpy()
    contexts = sorted(set(ctx[~is_control]))
    if len(contexts) < 2:
        raise DataSpecError(f"split kind 'fewshot' needs perturbed cells in at least 2 contexts, found {contexts}.")
    if holdout and len(holdout) != 1:
        raise DataSpecError(f"split kind 'fewshot' holds out perturbations of ONE context; got holdout={list(holdout)}.")
    chosen = _check_holdout(holdout, contexts, "context")[0] if holdout else str(rng.choice(contexts))
    here = sorted(set(labels[(ctx == chosen) & ~is_control]))
    elsewhere = set(labels[(ctx != chosen) & ~is_control])
    eligible = [p for p in here if p in elsewhere]
    if len(eligible) < 2:
        raise DataSpecError(
            f"split kind 'fewshot': context {chosen!r} shares {len(eligible)} perturbation(s) with the other contexts; "
            "need 2 (one held out, one seen there)."
        )
    picked = _pick(eligible, test_fraction, rng)
    if len(picked) == len(eligible):
        picked = picked[:-1]
    test_mask = (ctx == chosen) & np.isin(labels, picked)
    idx = np.arange(adata.n_obs)
    return Split("fewshot", idx[~test_mask], idx[test_mask], tuple(f"{chosen}/{p}" for p in picked), seed)


def _check_holdout(holdout: Sequence[str], eligible: Sequence[str], what: str) -> list[str]:
    bad = [h for h in holdout if h not in set(eligible)]
    if bad:
        hints = {b: difflib.get_close_matches(b, eligible, n=3) for b in bad}
        raise DataSpecError(
            f"held-out {what}(s) {bad} are not among the {len(eligible)} eligible ({sorted(eligible)[:10]}"
            f"{' ...' if len(eligible) > 10 else ''}); closest: {hints}."
        )
    return sorted(holdout)
