"""Ground-truth gene-network simulators: rule parsing, Boolean dynamics, attractors, BoolODE, SERGIO, screens."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cellgym.predictors.base import DataSpecError, GeneMismatchError, UnknownPerturbationError
from cellgym.predictors.grn import (
    BooleanNetwork,
    BooleanPredictor,
    RuleSyntaxError,
    SergioPredictor,
    simulate_screen,
    technical_noise,
)
from cellgym.registry import make_predictor

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # as tests/conftest.py
BOOLEAN_DIR = SHARED_DATA / "grn" / "boolean"
# files in that folder that are not Gene<TAB>Rule models: initial conditions, edge strengths, input values,
# and randNet.txt, a signed edge list (Gene1 Gene2 Type) with no rules to parse
NOT_RULE_FILES = ("_ics.txt", "_strengths.txt", "-inputs.txt", "randNet.txt")
RULE_FILES = sorted(p.name for p in BOOLEAN_DIR.glob("*.txt") if not p.name.endswith(NOT_RULE_FILES)) if BOOLEAN_DIR.is_dir() else []

FATES = {"erythrocyte", "megakaryocyte", "granulocyte", "monocyte"}


def on_genes(net: BooleanNetwork, state: np.ndarray) -> set[str]:
    return {net.genes[i] for i in np.flatnonzero(state)}


# ------------------------------------------------------------------------------------------------ parser
def test_parser_truth_tables_and_precedence() -> None:
    net = BooleanNetwork.from_rules({"a": "b and not c or d", "b": "not(a | b) & 1", "c": "TRUE", "d": "d"})
    states = net._decode(torch.arange(16))
    a, b, c, d = states.T
    out = net.evaluate(states)
    assert torch.equal(out[:, 0], (b & ~c) | d)  # not > and > or
    assert torch.equal(out[:, 1], ~(a | b))
    assert out[:, 2].all()
    assert torch.equal(out[:, 3], d)


def test_parser_inputs_and_header_text() -> None:
    net = BooleanNetwork.from_rules("Gene\tRule\nx\tinput1 and not x\n")
    assert net.genes == ["x", "input1"] and net.inputs == ["input1"]
    s = torch.tensor([[False, True], [True, True]])
    assert net.step_sync(s).tolist() == [[True, True], [False, True]]  # input keeps its value


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [("a and (b", "expected ')'"), ("a and", "expected a gene name"), ("a b", "expected 'and', 'or'"), ("a $ b", "unexpected character '$'"), ("", "empty")],
)
def test_parser_errors(rule: str, fragment: str) -> None:
    with pytest.raises(RuleSyntaxError, match=re.escape(fragment)):
        BooleanNetwork.from_rules({"a": rule or " ", "b": "a"} if rule else {"a": "a", "b": "   "})


def test_parser_never_runs_python() -> None:
    with pytest.raises(RuleSyntaxError):
        BooleanNetwork.from_rules({"a": "__import__('os').system('true')"})


@pytest.mark.parametrize("name", RULE_FILES)
def test_every_shared_boolean_model_parses_and_steps(name: str, shared_data) -> None:
    net = BooleanNetwork.from_file(BOOLEAN_DIR / name)
    rows = [ln.split("\t", 1) for ln in (BOOLEAN_DIR / name).read_text().splitlines()[1:] if ln.strip()]
    assert net.genes[: len(rows)] == [r[0].strip() for r in rows]
    s = torch.rand(64, net.n_genes, generator=torch.Generator().manual_seed(0)) > 0.5
    nxt = net.step_sync(s)
    # check every gene's update against an independent evaluation of its rule on each state
    for i, g in enumerate(net.genes[: len(rows)]):
        env = {h: s[:, j] for j, h in enumerate(net.genes)}
        from cellgym.predictors.grn._rules import evaluate, parse_rule

        assert torch.equal(nxt[:, i], evaluate(parse_rule(net.rules[g]), env, torch.zeros(64, dtype=torch.bool))), g
    if net.n_genes <= 16:  # enumerate every state
        atts = net.attractors()
        assert sum(a.basin for a in atts) == 2**net.n_genes
    else:  # too many states for a fast test (GSD 19 genes, EMT 61 with inputs): attractors reached from 256 states
        atts = net.attractors(states=s[:32])
        assert sum(a.basin for a in atts) == 32
        for a in atts:  # each attractor maps onto itself: cycle states step to the next
            st = torch.from_numpy(a.states)
            assert torch.equal(net.step_sync(st), torch.roll(st, -1, 0))


def test_shared_ics_are_read(shared_data) -> None:
    net = BooleanNetwork.from_file(shared_data / "grn" / "boolean" / "HSC.txt")
    assert on_genes(net, net.initial_state().numpy()) == {"Cebpa", "Pu1", "Gata2"}


def test_bad_model_file(tmp_path) -> None:
    bad = tmp_path / "m.txt"
    bad.write_text("Gene1\tGene2\tType\na\tb\t+\n")
    with pytest.raises(DataSpecError, match="expected a tab-separated file with header 'Gene"):
        BooleanNetwork.from_file(bad)
    with pytest.raises(DataSpecError, match="does not exist"):
        BooleanNetwork.from_file(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------------ Krumsiek
def test_krumsiek_attractors_are_the_known_fates() -> None:
    net = BooleanNetwork.krumsiek11()
    fixed = {frozenset(on_genes(net, a.states[0])): a.label for a in net.attractors() if a.is_fixed_point}
    assert fixed[frozenset({"Gata1", "Fog1", "Eklf", "Scl"})] == "erythrocyte"
    assert fixed[frozenset({"Gata1", "Fog1", "Fli1", "Scl"})] == "megakaryocyte"
    assert fixed[frozenset({"Cebpa", "Pu1", "Gfi1"})] == "granulocyte"
    assert fixed[frozenset({"Cebpa", "Pu1", "cJun", "EgrNab"})] == "monocyte"
    assert fixed[frozenset()] == "other"
    assert FATES <= {a.label for a in net.attractors()}


def test_krumsiek_matches_boolode_hsc_attractors(shared_data) -> None:
    """The shipped rules (paper's Table 1) and BoolODE's HSC.txt differ only in how Cebpa is written; same attractors."""
    ours = BooleanNetwork.krumsiek11()
    theirs = BooleanNetwork.from_file(shared_data / "grn" / "boolean" / "HSC.txt")
    assert ours.genes == theirs.genes

    def att(n: BooleanNetwork) -> set[frozenset[tuple[int, ...]]]:
        return {frozenset(tuple(s.astype(int)) for s in a.states) for a in n.attractors()}

    assert att(ours) == att(theirs)


def test_gata1_knockout_prevents_erythroid_and_megakaryocyte_fates() -> None:
    net = BooleanNetwork.krumsiek11()
    ko = net.state_from_genes(["Gata1"])
    labels = {a.label for a in net.attractors(clamp_off=ko)}  # from every one of the 2**11 states
    assert not labels & {"erythrocyte", "megakaryocyte", "mep"}
    assert {"granulocyte", "monocyte"} <= labels
    # from the progenitor state under asynchronous updates all four fates appear, and none of the MegE ones with the KO
    p = BooleanPredictor(dynamics="async")
    x = p.network.initial_state().float().repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    ctrl = collections.Counter(p.attractor_label(p.sample_batch(x, p.encode_perturbations(["control"] * 2000), generator=gen)))
    ko_ = collections.Counter(p.attractor_label(p.sample_batch(x, p.encode_perturbations(["Gata1_KO"] * 2000), generator=gen)))
    assert set(ctrl) == FATES and min(ctrl.values()) > 100
    assert ko_["erythrocyte"] == ko_["megakaryocyte"] == 0
    # synchronous: the MEP-like Gata2+ state commits to erythrocyte / megakaryocyte; Gata1 KO blocks it
    s = BooleanPredictor()
    g2 = s.network.state_from_genes(["Gata2"])[None].float()
    assert s.attractor_label(s.predict_batch(g2, s.encode_perturbations(["Fli1_KO"]))) == ["erythrocyte"]
    assert s.attractor_label(s.predict_batch(g2, s.encode_perturbations(["Eklf_KO"]))) == ["megakaryocyte"]
    assert s.attractor_label(s.predict_batch(g2, s.encode_perturbations(["Gata1_KO+Fli1_KO"]))) == ["other"]


# ------------------------------------------------------------------------------------------------ predictor
def test_boolean_predictor_contract() -> None:
    p = make_predictor("grn.boolean")
    assert isinstance(p, BooleanPredictor) and p.dynamic
    assert p.genes == ["Gata2", "Gata1", "Fog1", "Eklf", "Fli1", "Scl", "Cebpa", "Pu1", "cJun", "EgrNab", "Gfi1"]
    assert p.contexts == [""]
    assert p.perturbations == [f"{g}_KO" for g in p.genes] + [f"{g}_OE" for g in p.genes]
    x = (torch.rand(50, 11, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    pert = p.encode_perturbations(["control"] * 25 + ["Pu1_OE+Gata1_KO"] * 25)
    y = p.predict_batch(x, pert)
    assert y.dtype == torch.float32 and y.shape == (50, 11) and not y.requires_grad
    assert torch.equal(y, p.predict_batch(x, pert))  # deterministic
    assert (y[25:, 7] == 1).all() and (y[25:, 1] == 0).all()  # clamps hold
    assert p.is_attractor(y[:25]).all()  # 20 sync steps reach the attractors from any state
    # OE of Pu1 + KO of Gata1 moves everything to the myeloid side
    assert set(p.attractor_label(y[25:])) <= {"granulocyte", "monocyte"}
    with pytest.raises(UnknownPerturbationError):
        p.encode_perturbations(["Gata1_XX"])


def test_boolean_predictor_bad_args_and_fit(tmp_path) -> None:
    with pytest.raises(DataSpecError, match="Did you mean 'sync'"):
        BooleanPredictor(dynamics="synk")
    with pytest.raises(DataSpecError, match="knockdown"):
        BooleanPredictor(perturbation_kinds=("KO", "KD"))
    with pytest.raises(DataSpecError, match="no shipped Boolean model"):
        BooleanPredictor(model="krumsiek12")
    p = BooleanPredictor()
    assert p.fit().epochs == 0
    assert p.fit(_adata(p.genes)).n_obs == 3
    with pytest.raises(GeneMismatchError):
        p.fit(_adata(p.genes[::-1]))


def _adata(genes: list[str]):
    import anndata as ad
    import pandas as pd

    return ad.AnnData(np.zeros((3, len(genes)), np.float32), obs=pd.DataFrame({"perturbation": ["control"] * 3}, index=["0", "1", "2"]), var=pd.DataFrame(index=genes))


def test_boolean_predictor_save_load(tmp_path) -> None:
    from cellgym.predictors.base import Predictor

    p = BooleanPredictor(dynamics="ode", n_steps=30)
    p.save(tmp_path / "m")
    q = Predictor.load(tmp_path / "m")
    x = torch.rand(8, 11, generator=torch.Generator().manual_seed(0))
    pert = p.encode_perturbations(["Gata1_KD"] * 8)
    assert torch.equal(p.predict_batch(x, pert), q.predict_batch(x, pert))


def test_async_seeded_reproducible() -> None:
    p = BooleanPredictor(dynamics="async", n_steps=3)
    x = (torch.rand(100, 11, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    pert = p.encode_perturbations(["control"] * 100)
    a = p.sample_batch(x, pert, generator=torch.Generator().manual_seed(5))
    b = p.sample_batch(x, pert, generator=torch.Generator().manual_seed(5))
    c = p.sample_batch(x, pert, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------------------------ BoolODE
@pytest.mark.parametrize("dynamics", ["ode", "sde"])
def test_continuous_cells_stay_at_boolean_attractors(dynamics: str) -> None:
    p = BooleanPredictor(dynamics=dynamics, n_steps=200)
    fixed = [a for a in p.network.attractors() if a.is_fixed_point and a.label in FATES]
    x0 = torch.from_numpy(np.stack([a.states[0] for a in fixed])).float().repeat_interleave(50, 0)
    gen = torch.Generator().manual_seed(0)
    x = (x0 * 0.8 + 0.1 + 0.05 * torch.randn(x0.shape, generator=gen)).clamp(0, 1)  # near the attractor, not on it
    pert = p.encode_perturbations(["control"] * x.shape[0])
    y = p.sample_batch(x, pert, generator=gen)
    assert ((y > 0.5) == (x0 > 0.5)).all(dim=1).float().mean() >= 0.99
    assert (y - x0).abs().max() < (0.5 if dynamics == "sde" else 0.05)
    assert p.attractor_label(y) == [a.label for a in fixed for _ in range(50)]


def test_continuous_perturbations() -> None:
    ery = torch.tensor([[0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    pert_names = ["control", "Eklf_KO", "Eklf_KD", "Pu1_OE"]
    p = BooleanPredictor(dynamics="ode", n_steps=200)  # knockdown to 0.3: below the Hill threshold 0.5
    out = p.predict_batch(ery.repeat(4, 1), p.encode_perturbations(pert_names))
    assert p.attractor_label(out) == ["erythrocyte", "megakaryocyte", "megakaryocyte", "monocyte"]
    mild = BooleanPredictor(dynamics="ode", n_steps=200, knockdown=0.7)  # above it: fate kept, level lowered
    out = mild.predict_batch(ery, mild.encode_perturbations(["Eklf_KD"]))
    assert mild.attractor_label(out) == ["erythrocyte"] and abs(float(out[0, 3]) - 0.7) < 0.02


# ------------------------------------------------------------------------------------------------ SERGIO
def _two_gene_folder(tmp_path: Path) -> Path:
    """Master regulator 0 (rates 0.5 and 1.0 in two cell types) activates gene 1 with K = 3, n = 2."""
    (tmp_path / "Interaction_cID_4.txt").write_text("1.0,1.0,0.0,3.0,2.0\n")
    (tmp_path / "Regs_cID_4.txt").write_text("0.0,0.5,1.0\n")
    return tmp_path


def test_sergio_two_gene_steady_state_is_analytic(tmp_path) -> None:
    p = SergioPredictor(network=str(_two_gene_folder(tmp_path)), n_steps=400)
    lam = 0.8
    x0 = np.array([0.5, 1.0]) / lam  # master regulator: b / lambda per cell type
    k = x0.mean()  # SERGIO's half-response: the regulator's mean steady state over cell types
    x1 = 3.0 * x0**2 / (x0**2 + k**2) / lam
    for c in range(2):
        assert np.allclose(p.steady_state(c).numpy(), [x0[c], x1[c]], rtol=1e-5)
    # the dynamics converge there from zero (noise-free), and the noisy cells fluctuate around it
    ctx = torch.tensor([0, 1]).repeat_interleave(2000)
    y = p.predict_batch(torch.zeros(4000, 2), torch.zeros(4000, 6), ctx)
    assert np.allclose(y[[0, -1]].numpy(), [[x0[0], x1[0]], [x0[1], x1[1]]], rtol=1e-3)
    ys = p.sample_batch(y, torch.zeros(4000, 6), ctx, generator=torch.Generator().manual_seed(0))
    assert ys[:2000].std(0).min() > 0.1  # chemical-Langevin noise is there (q = 1: the clip at 0 biases the mean up)
    quiet = SergioPredictor(network=str(tmp_path), n_steps=400, noise=0.1)
    ys = quiet.sample_batch(y, torch.zeros(4000, 6), ctx, generator=torch.Generator().manual_seed(0))
    assert np.allclose(ys[:2000].mean(0).numpy(), [x0[0], x1[0]], rtol=0.03)
    # perturbations: KO / KD of the regulator, OE of the target
    pert = p.encode_perturbations(["G0_KO", "G0_KD", "G1_OE"])
    out = p.predict_batch(y[[-1, -1, -1]], pert, torch.ones(3, dtype=torch.long)).numpy()
    xkd = 0.3 * x0[1]
    assert np.allclose(out[0], [0, 0], atol=1e-3)
    assert np.allclose(out[1], [xkd, 3.0 * xkd**2 / (xkd**2 + k**2) / lam], rtol=1e-3)
    assert np.isclose(out[2, 1], 2.0 * 3.0 / lam, rtol=1e-3)  # 2 x maximal production (sum |K|)


def test_sergio_ds1_parses_and_is_at_steady_state(shared_data) -> None:
    p = SergioPredictor(network=str(shared_data / "grn" / "sergio_ds1"), n_steps=50)
    assert len(p.genes) == 100 and len(p.contexts) == 9 and len(p.perturbations) == 300
    edges = len(p.network.src)
    assert edges == sum(1 for ln in (shared_data / "grn" / "sergio_ds1" / "gt_GRN.csv").read_text().splitlines() if ln.strip())
    ss = torch.stack([p.steady_state(c) for c in range(9)])
    y = p.predict_batch(ss, torch.zeros(9, 300), torch.arange(9))
    assert torch.allclose(y, ss, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ss[0], ss[1])  # cell types differ


def test_sergio_bad_inputs(tmp_path) -> None:
    with pytest.raises(DataSpecError, match="expected one Interaction_cID"):
        SergioPredictor(network=str(tmp_path))
    (tmp_path / "Interaction_cID_4.txt").write_text("1.0,2.0,0.0,3.0,2.0\n")
    (tmp_path / "Regs_cID_4.txt").write_text("0.0,0.5\n")
    with pytest.raises(DataSpecError, match="line 1: expected 'target, n_regs"):
        SergioPredictor(network=str(tmp_path))
    with pytest.raises(DataSpecError, match="stable Euler step"):
        SergioPredictor(dt=1.0)


def test_sergio_seeded_and_save_load(tmp_path) -> None:
    p = SergioPredictor(n_steps=20)
    ctx = torch.tensor([0, 1, 2] * 10)
    x = p.initial_states(30, ctx, generator=torch.Generator().manual_seed(1))
    pert = p.encode_perturbations(["G5_KO+G3_OE"] * 30)
    a = p.sample_batch(x, pert, ctx, generator=torch.Generator().manual_seed(2))
    b = p.sample_batch(x, pert, ctx, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, p.sample_batch(x, pert, ctx, generator=torch.Generator().manual_seed(3)))
    p.save(tmp_path / "s")
    from cellgym.predictors.base import Predictor

    q = Predictor.load(tmp_path / "s")
    assert torch.equal(q.predict_batch(x, pert, ctx), p.predict_batch(x, pert, ctx))


def test_technical_noise_counts() -> None:
    rng = np.random.default_rng(0)
    expr = rng.gamma(2.0, 1.0, (500, 30))
    counts = technical_noise(expr, np.random.default_rng(1))
    assert counts.dtype == np.int64 and (counts >= 0).all()
    assert np.array_equal(counts, technical_noise(expr, np.random.default_rng(1)))
    plain = technical_noise(expr, np.random.default_rng(1), enabled=False)
    assert (counts == 0).mean() > (plain == 0).mean()  # dropout adds zeros
    assert abs(np.log(plain.sum(1)).mean() - 7.0) < 0.05  # library size exp(7)
    assert np.log(counts.sum(1)).std() > 0.2  # log-normal library sizes vary


# ------------------------------------------------------------------------------------------------ screens
def test_simulate_screen_sergio() -> None:
    p = SergioPredictor(n_steps=60)
    kw = {"n_cells_per_condition": 20, "perturbations": ["G0_KO", "G1_KO", "G2_OE", "G5_KD"], "doubles": 3, "seed": 0}
    a = simulate_screen(p, **kw)
    labels = a.obs["perturbation"].astype(str)
    assert set(labels) >= {"control", "G0_KO", "G5_KD"} and (labels.str.count(r"\+") == 1).sum() == 3 * 20 * 3
    assert a.n_obs == (1 + 4 + 3) * 20 * 3 and a.n_vars == 20
    assert set(a.obs["cell_type"]) == {"type0", "type1", "type2"}
    c = a.layers["counts"]
    assert c.dtype == np.int64 and (c >= 0).all()
    assert np.allclose(np.expm1(a.X).sum(1), 1e4, rtol=1e-3)  # log1p of counts normalised to 1e4
    assert a.uns["grn"]["predictor"] == "grn.sergio" and len(a.uns["grn"]["edges"]) == len(p.network.src)
    b = simulate_screen(p, **kw)
    assert np.array_equal(b.layers["counts"], c) and np.array_equal(b.X, a.X)  # seeded
    # ground truth is recoverable: a knocked-out master regulator is near 0 before technical noise
    sim = a.layers["simulated"][:, 0]
    assert sim[(labels == "G0_KO").to_numpy()].mean() < 0.2 * sim[(labels == "control").to_numpy()].mean()
    from cellgym.predictors.base import DataSpec, validate

    validate(a, DataSpec(counts="counts", context_key="cell_type"))


def test_simulate_screen_boolean_labels_fates() -> None:
    p = BooleanPredictor()
    a = simulate_screen(p, n_cells_per_condition=100, perturbations=["Gata1_KO", "Pu1_KO", "Pu1_OE"], doubles=["Gata1_KO+Pu1_KO"], seed=1)
    ct = a.obs.groupby("perturbation", observed=True)["cell_type"].agg(lambda s: set(s.astype(str)))
    assert not ct["Gata1_KO"] & {"erythrocyte", "megakaryocyte", "mep"}
    assert not ct["Pu1_KO"] & {"granulocyte", "monocyte"}
    assert ct["Pu1_OE"] <= {"granulocyte", "monocyte"}
    assert ct["control"] >= {"erythrocyte", "megakaryocyte", "granulocyte", "monocyte"}
    assert np.isin(a.layers["simulated"], [0.0, 1.0]).all()


def test_simulate_screen_errors() -> None:
    with pytest.raises(UnknownPerturbationError):
        simulate_screen(BooleanPredictor(), perturbations=["Gata1_XX"])
    with pytest.raises(DataSpecError, match="doubles=500"):
        simulate_screen(BooleanPredictor(), perturbations=["Gata1_KO", "Pu1_KO"], doubles=500)
    with pytest.raises(DataSpecError, match=r"grn\.boolean or grn\.sergio"):
        simulate_screen(object())


def test_attractors_from_given_states_match_enumeration() -> None:
    net = BooleanNetwork.krumsiek11()
    every = net._decode(torch.arange(2**net.n_genes))
    a = {(x.states.tobytes(), x.basin, x.label) for x in net.attractors()}
    b = {(x.states.tobytes(), x.basin, x.label) for x in net.attractors(states=every)}
    assert a == b


def test_sergio_lineages_network_types_are_set_by_master_regulators(tmp_path) -> None:
    p = SergioPredictor(network="lineages", overexpression=1.0)
    assert len(p.genes) == 20 and p.contexts == ["type0", "type1", "type2"]
    ss = torch.stack([p.steady_state(c) for c in range(3)])
    high, basal = 1.0 / 0.8, 0.1 / 0.8  # rate / decay
    expected = torch.tensor([[high, basal, basal, high], [basal, high, basal, basal], [basal, basal, high, high]])
    assert torch.allclose(ss[:, :4], expected)
    assert torch.cdist(ss, ss).triu(1)[torch.triu(torch.ones(3, 3), 1).bool()].min() > 5  # distinct types
    # G0 KO + G3 KO + G1 OE turns type0 into (almost) type1: only the basal masters differ
    pert = p.encode_perturbations(["G0_KO+G3_KO+G1_OE"])
    y = p.predict_batch(ss[:1], pert, torch.zeros(1, dtype=torch.long))
    y = p.predict_batch(y, pert, torch.zeros(1, dtype=torch.long))
    assert float((y[0] - ss[1]).norm()) < 0.5 < float((ss[0] - ss[1]).norm()) / 20
    p.save(tmp_path / "lin")
    from cellgym.predictors.base import Predictor

    assert Predictor.load(tmp_path / "lin").config["network"] == "lineages"
