"""The predictor contract, for every registered response model (picked up from the registry).

A registered name whose module does not exist yet is skipped with the reason; any other import
error fails. Dynamic simulators (``dynamic = True``, ``grn.*``) have their own contract tests.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import yaml

from cellgym.predictors import CheckpointError, GeneMismatchError, Predictor, UnknownPerturbationError
from cellgym.registry import specs

FIT_KWARGS: dict[str, dict] = {}  # per-name fit kwargs; default below keeps trained models fast
DEFAULT_FIT_KWARGS = {"epochs": 2}
NAMES = sorted(specs("predictors"))
# Predictors that knowingly predict a never-seen perturbation with a generic learned effect and warn
# (naming it) instead of raising UnknownPerturbationError. Everyone else must raise.
def predictor_class(name: str) -> type[Predictor]:
    """The registered class; skips when its module does not exist yet."""
    module = specs("predictors")[name].entry_point.partition(":")[0]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            pytest.skip(f"{name}: module {module} is not written yet ({exc})")
        raise
    return specs("predictors")[name].load()


_FITTED: dict[str, Predictor] = {}


@pytest.fixture
def fitted(request, screen, screen_counts, spec) -> tuple[Predictor, object]:
    """(a fitted predictor, the data it was fitted on); fitted once per name per session."""
    name = request.param
    cls = predictor_class(name)
    if cls.dynamic:
        pytest.skip(f"{name} is a dynamic simulator (contract tested in its own file)")
    if not getattr(cls, "response_model", True):
        pytest.skip(f"{name} embeds cells and predicts no responses (tested in its own file)")
    data = screen_counts if cls.needs_counts else screen
    if name not in _FITTED:
        from cellgym.registry import make_predictor

        model = make_predictor(name)
        model.fit(data, spec, seed=0, **FIT_KWARGS.get(name, DEFAULT_FIT_KWARGS))
        _FITTED[name] = model
    return _FITTED[name], data


def _controls(data, ctx="A"):
    mask = (data.obs["perturbation"] == "control").to_numpy() & (data.obs["cell_type"] == ctx).to_numpy()
    return data[mask]


@pytest.mark.parametrize("fitted", NAMES, indirect=True)
def test_save_load_predict_identical(fitted, tmp_path):
    model, data = fitted
    before = model.predict(_controls(data), "G0+G1", context="A").X
    model.save(tmp_path / "m")
    loaded = Predictor.load(tmp_path / "m")
    assert type(loaded) is type(model)
    assert loaded.genes == model.genes and loaded.perturbations == model.perturbations
    np.testing.assert_array_equal(loaded.predict(_controls(data), "G0+G1", context="A").X, before)
    assert type(model).load(tmp_path / "m").config == model.config


@pytest.mark.parametrize("fitted", NAMES, indirect=True)
def test_predict_batch_shape_dtype_no_grad(fitted):
    model, _ = fitted
    b, g = 7, len(model.genes)
    x = torch.rand(b, g, requires_grad=True)
    pert = model.encode_perturbations(["G0", "G1+G2", "control", "G3", "G4", "G0", "G5"])
    ctx = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    out = model.predict_batch(x, pert, ctx)
    assert out.shape == (b, g) and out.dtype == torch.float32 and not out.requires_grad
    assert torch.isfinite(out).all()
    out_none = model.predict_batch(x[:2].detach(), pert[:2], None)  # None = the first context
    assert out_none.shape == (2, g)


@pytest.mark.parametrize("fitted", NAMES, indirect=True)
def test_unknown_perturbation_and_other_genes(fitted):
    model, data = fitted
    with pytest.raises(UnknownPerturbationError, match="NOT_A_GENE"):
        model.predict(_controls(data), "NOT_A_GENE", context="A")
    other = _controls(data)[:, ::-1].copy()
    with pytest.raises(GeneMismatchError, match="another order"):
        model.predict(other, "G0", context="A")
    other = _controls(data)[:, 1:].copy()
    with pytest.raises(GeneMismatchError, match=r"1 missing \(first: \['G0'\]\)"):
        model.predict(other, "G0", context="A")


@pytest.mark.parametrize("fitted", NAMES, indirect=True)
def test_corrupt_checkpoints_fail_clearly(fitted, tmp_path):
    model, _ = fitted
    path = model.save(tmp_path / "m")
    weights = (path / "weights.pt").read_bytes()
    (path / "weights.pt").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match=r"weights.pt cannot be read as tensors.*corrupt"):
        Predictor.load(path)
    (path / "weights.pt").write_bytes(weights)
    config_text = (path / "config.yaml").read_text()
    (path / "config.yaml").write_text("predictor: [unclosed\n  : : :")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        Predictor.load(path)
    config = yaml.safe_load(config_text)
    (path / "config.yaml").write_text(yaml.safe_dump({**config, "format_version": 999}))
    with pytest.raises(CheckpointError, match=r"format version 999.*reads version 1"):
        Predictor.load(path)
    (path / "config.yaml").write_text(yaml.safe_dump({**config, "genes": config["genes"][:-1]}))
    if model.module.state_dict():  # a model with tensors over genes no longer fits them
        with pytest.raises(CheckpointError, match=r"does not fit|checksum differs"):
            Predictor.load(path)
    (path / "weights.pt").unlink()
    with pytest.raises(CheckpointError, match=r"weights\.pt is missing"):
        Predictor.load(path)
