"""The data contract: validate's messages for every bad input, count detection, splits without leakage."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from cellgym.predictors import (
    DataSpec,
    DataSpecError,
    GeneMismatchError,
    UnknownPerturbationError,
    expression,
    has_counts,
    is_count_matrix,
    split,
    validate,
)


# --------------------------------------------------------------------------------------------- validate
def test_valid_screen_passes(screen, spec, screen_counts):
    validate(screen, spec)
    validate(screen_counts, spec, require_counts=True)


def test_missing_column_names_it_and_suggests(screen):
    with pytest.raises(DataSpecError, match=r"no column 'cell_typ'.*Did you mean 'cell_type'\? Pass context_key='cell_type'"):
        validate(screen, DataSpec(context_key="cell_typ"))
    with pytest.raises(DataSpecError, match=r"no column 'condition' \(DataSpec.perturbation_key\)"):
        validate(screen, DataSpec(perturbation_key="condition"))


def test_missing_values_in_a_declared_column(screen, spec):
    screen.obs["cell_type"] = screen.obs["cell_type"].astype(object)
    screen.obs.iloc[3, screen.obs.columns.get_loc("cell_type")] = None
    with pytest.raises(DataSpecError, match=r"adata.obs\['cell_type'\].*1 missing value"):
        validate(screen, spec)


def test_no_control_cells_suggests_label(screen):
    with pytest.raises(DataSpecError, match=r"no control cells.*no value 'ctrl'.*Did you mean control='control'\?"):
        validate(screen, DataSpec(control="ctrl"))


def test_unknown_perturbations_named_with_closest(screen, spec):
    with pytest.raises(UnknownPerturbationError, match=r"unknown perturbation\(s\) \['G7'\]: not among the 7 known \(\['G0'"):
        validate(screen, spec, perturbations=[f"G{i}" for i in range(7)])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(screen, spec, bad):
    screen.X[5, 2] = bad
    with pytest.raises(DataSpecError, match=r"adata.X holds 1 non-finite value"):
        validate(screen, spec)


def test_non_finite_in_sparse_counts_layer(screen, spec):
    counts = np.ones(screen.shape, dtype=np.float32)
    counts[0, 0] = np.nan
    screen.layers["counts"] = sp.csr_matrix(counts)
    with pytest.raises(DataSpecError, match=r"adata.layers\['counts'\] holds 1 non-finite"):
        validate(screen, spec)


def test_negative_counts_where_declared(screen_counts, screen):
    bad = screen_counts.copy()
    bad.X[0, :3] = -1.0
    with pytest.raises(DataSpecError, match=r"counts in adata.X \(DataSpec.counts='X'\) hold 3 negative"):
        validate(bad, DataSpec(counts="X"))
    screen.layers["counts"] = sp.csr_matrix(-np.ones(screen.shape, dtype=np.float32))
    with pytest.raises(DataSpecError, match=r"adata.layers\['counts'\].*negative"):
        validate(screen, DataSpec(counts="counts"))
    validate(screen, DataSpec(counts=None))  # log data with no counts declared: negatives are not counts


def test_declared_counts_layer_missing(screen):
    with pytest.raises(DataSpecError, match=r"no layer 'raw'.*Pass counts='X'"):
        validate(screen, DataSpec(counts="raw"))


def test_require_counts_on_log_data(screen, spec):
    with pytest.raises(DataSpecError, match=r"needs raw counts.*layers\['counts'\]"):
        validate(screen, spec, require_counts=True)


def test_duplicate_gene_names(screen, spec):
    names = list(screen.var_names)
    names[1] = names[0]
    screen.var_names = names
    with pytest.raises(DataSpecError, match=r"1 duplicated gene name.*\['G0'\].*var_names_make_unique"):
        validate(screen, spec)


def test_empty_data_and_empty_labels(screen, spec):
    with pytest.raises(DataSpecError, match=r"AnnData is empty \(0 cells"):
        validate(screen[:0], spec)
    screen.obs["perturbation"] = screen.obs["perturbation"].astype(str)
    screen.obs.iloc[:4, 0] = ["", "+", "", ""]
    with pytest.raises(DataSpecError, match=r"4 cell\(s\) whose label names no perturbation.*would silently count as controls"):
        validate(screen, spec)


def test_context_without_controls(screen, spec):
    drop = (screen.obs["cell_type"] == "B") & (screen.obs["perturbation"] == "control")
    with pytest.raises(DataSpecError, match=r"context\(s\) \['B'\].*perturbed cells but no control cells"):
        validate(screen[~drop.to_numpy()], spec)
    validate(screen[~drop.to_numpy()], spec, require_control=False)


def test_gene_mismatch_counts_and_names(screen, spec):
    genes = list(screen.var_names)
    with pytest.raises(GeneMismatchError, match=r"expected the 41 genes.*got 40; 1 missing \(first: \['X1'\]\)"):
        validate(screen, spec, genes=[*genes, "X1"])
    with pytest.raises(GeneMismatchError, match="same 40 but in another order"):
        validate(screen, spec, genes=genes[::-1])


# ---------------------------------------------------------------------------------------- count detection
def test_count_detection(screen, screen_counts, spec):
    assert is_count_matrix(screen_counts.X) and is_count_matrix(sp.csr_matrix(screen_counts.X))
    assert not is_count_matrix(screen.X)
    assert has_counts(screen_counts, spec) and not has_counts(screen, spec)
    screen.layers["counts"] = screen_counts.X.copy()
    assert has_counts(screen, spec)  # auto prefers layers['counts']
    assert not has_counts(screen_counts, DataSpec(counts=None))


def test_expression_of_counts_matches_scanpy(screen_counts, spec):
    ref = screen_counts.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    np.testing.assert_allclose(expression(screen_counts, spec), ref.X, rtol=1e-5, atol=1e-5)
    # log data passes through unchanged
    screen = screen_counts.copy()
    screen.X = ref.X
    np.testing.assert_array_equal(expression(screen, DataSpec(counts=None)), ref.X.astype(np.float32))


# ------------------------------------------------------------------------------------------------ splits
KINDS = ["perturbations", "combos", "contexts", "random"]


@pytest.mark.parametrize("kind", KINDS)
def test_split_reproducible_and_disjoint(screen, spec, kind):
    a, b = split(screen, spec, kind, seed=3), split(screen, spec, kind, seed=3)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    assert a.holdout == b.holdout
    assert len(np.intersect1d(a.train, a.test)) == 0
    np.testing.assert_array_equal(np.union1d(a.train, a.test), np.arange(screen.n_obs))
    labels = screen.obs["perturbation"].astype(str).to_numpy()
    assert not (labels[a.test] == "control").any(), "control cells are inputs, never test targets"
    draws = {split(screen, spec, kind, seed=s).test.tobytes() for s in range(6)}
    assert len(draws) > 1, "the seed must change the split"


@pytest.mark.parametrize("kind", ["perturbations", "combos"])
def test_no_perturbation_leakage(screen, spec, kind):
    s = split(screen, spec, kind, seed=0)
    labels = screen.obs["perturbation"].astype(str).to_numpy()
    train_labels, test_labels = set(labels[s.train]), set(labels[s.test])
    assert test_labels == set(s.holdout)
    assert not (train_labels & test_labels)
    if kind == "combos":
        assert all("+" in h for h in s.holdout)
        assert len(s.holdout) == 3  # default 0.5 of the 5 doubles, rounded half up
        singles = {x for h in s.holdout for x in h.split("+")}
        assert singles <= train_labels, "both singles of a held-out combination stay in training"


def test_no_context_leakage_and_controls_stay(screen, spec):
    s = split(screen, spec, "contexts", seed=0, holdout=["B"])
    ctx = screen.obs["cell_type"].astype(str).to_numpy()
    labels = screen.obs["perturbation"].astype(str).to_numpy()
    assert set(ctx[s.test]) == {"B"}
    assert not ((ctx[s.train] == "B") & (labels[s.train] != "control")).any()
    assert ((ctx[s.train] == "B") & (labels[s.train] == "control")).sum() == 60


def test_random_split_fraction(screen, spec):
    s = split(screen, spec, "random", seed=0, test_fraction=0.25)
    n_perturbed = int((screen.obs["perturbation"] != "control").sum())
    assert len(s.test) == int(np.floor(0.25 * n_perturbed + 0.5))


def test_split_bad_inputs(screen, spec):
    with pytest.raises(DataSpecError, match=r"unknown split kind 'cells'"):
        split(screen, spec, "cells")
    with pytest.raises(DataSpecError, match=r"test_fraction must be in \(0, 1\)"):
        split(screen, spec, "random", test_fraction=1.5)
    with pytest.raises(DataSpecError, match=r"held-out perturbation\(s\) \['G99'\].*closest"):
        split(screen, spec, "perturbations", holdout=["G99"])
    with pytest.raises(DataSpecError, match=r"held-out perturbation\(s\) \['G1'\]"):
        split(screen, spec, "combos", holdout=["G1"])  # a single is not an eligible combination
    with pytest.raises(DataSpecError, match="cannot hold out every context"):
        split(screen, spec, "contexts", holdout=["A", "B"])
    with pytest.raises(DataSpecError, match=r"needs DataSpec\.context_key"):
        split(screen, DataSpec(), "contexts")
    singles_only = screen[~screen.obs["perturbation"].str.contains("+", regex=False).to_numpy()]
    with pytest.raises(DataSpecError, match="needs combined perturbations"):
        split(singles_only, spec, "combos")
