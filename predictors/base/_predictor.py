"""The Predictor contract (DESIGN §3): a trainable perturbation-response model, AnnData at the edges."""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ._anndata import check_log1p, prediction_anndata
from ._checkpoint import read_checkpoint, write_checkpoint
from ._data import (
    DataSpec,
    check_genes,
    expression,
    perturbation_genes,
    raw_counts,
    unknown_perturbation_error,
    validate,
)
from ._types import FitData, FitReport
from .errors import CheckpointError, DataSpecError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["Predictor", "PredictorModule", "seeded"]

PREDICT_CHUNK = 8192  # cells per predict_batch call inside predict()


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run a block under torch's global RNG seeded with ``seed``, restoring the caller's RNG state after.

    Weight initialisation and dropout draw from torch's global generator; forking it keeps library code
    reproducible without changing the user's random state.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


VOCABULARY_KEY = "_cellgym_vocabulary_sha256"  # stored with the weights, checked against config.yaml on load


def _vocabulary_digest(genes: Sequence[str], perturbations: Sequence[str], contexts: Sequence[str]) -> torch.Tensor:
    """SHA-256 of the ordered vocabularies, as a uint8 tensor (32,) that travels in ``weights.pt``."""
    text = json.dumps([[str(g) for g in genes], [str(p) for p in perturbations], [str(c) for c in contexts]])
    return torch.tensor(list(hashlib.sha256(text.encode()).digest()), dtype=torch.uint8)


class PredictorModule(nn.Module):
    """Base of the torch modules behind predictors: tensors in, tensors out, no AnnData, no I/O.

    Subclasses implement ``loss(batch) -> LossOutput`` (used by the shared fit loop) and
    ``predict_batch(x, pert, ctx) -> Tensor[B, G]``.
    """

    def loss(self, batch: dict[str, torch.Tensor]) -> Any:
        """Training loss of one batch; returns a :class:`LossOutput`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement loss()")

    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Predicted expression (B, G) of cells ``x`` (B, G) under perturbations ``pert`` (B, P)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement predict_batch()")


class Predictor(abc.ABC):
    """A perturbation-response model: environments use it as a transition function or reward model.

    Every predictor works on log1p-normalised expression at its tensor boundary (``predict_batch``),
    holds its tensors in ``self.module`` (an ``nn.Module``; buffers for models with nothing to train),
    and is fitted by :meth:`fit` on an AnnData described by a :class:`DataSpec`.

    Subclasses set ``name`` (the registry name), implement :meth:`_build_module` (make ``self.module``
    from the vocabularies and config) and :meth:`_fit`, and pass their keyword arguments to
    ``super().__init__(**config)`` so that checkpoints can rebuild them.

    Attributes
    ----------
    genes
        Gene names, in order (G).
    perturbations
        Single perturbations the model knows (P); combinations are multi-hot rows.
    contexts
        Context labels (cell types / lines); ``[""]`` when the data has one context.
    dynamic
        False for response models (map control cells to perturbed cells); True for simulators that
        evolve the given cells forward under the perturbations in force (``grn.*``).
    """

    name: ClassVar[str] = ""
    dynamic: ClassVar[bool] = False
    needs_counts: ClassVar[bool] = False
    #: the family predicts expression, never below 0 (``predict_batch`` / ``predict`` clamp unless told not to)
    nonnegative: ClassVar[bool] = True

    def __init__(self, **config: Any) -> None:
        self.config: dict[str, Any] = config
        self.genes: list[str] = []
        self.perturbations: list[str] = []
        self.contexts: list[str] = []
        self.spec: DataSpec = DataSpec()
        self.module: nn.Module | None = None
        #: predictions are clipped at this value: 0.0 when the training expression was >= 0 (log1p), else None
        self.output_floor: float | None = 0.0

    # ------------------------------------------------------------------------------------------- fitting
    def fit(
        self,
        adata: AnnData,
        spec: DataSpec | None = None,
        *,
        epochs: int | None = None,
        batch_size: int = 256,
        device: str = "cpu",
        seed: int | None = 0,
        logger: Any = None,
    ) -> FitReport:
        """Fit on ``adata`` (validated against ``spec`` first); returns per-epoch history.

        ``logger`` is anything with ``add_scalar(tag, value, step)`` (a TensorBoard ``SummaryWriter``).
        """
        spec = spec or DataSpec()
        validate(adata, spec, require_counts=self.needs_counts)
        self.spec = spec
        self.genes = [str(g) for g in adata.var_names]
        labels = adata.obs[spec.perturbation_key].astype(str).to_numpy()
        self.perturbations = perturbation_genes(np.unique(labels), spec)
        if spec.context_key is not None:
            self.contexts = sorted(adata.obs[spec.context_key].astype(str).unique().tolist())
        else:
            self.contexts = [""]
        data = self.fit_data(adata)
        self.output_floor = 0.0 if data.x.size == 0 or float(data.x.min()) >= 0.0 else None
        with seeded(seed):
            self._build_module()
            report = self._fit(data, epochs=epochs, batch_size=batch_size, device=device, seed=seed, logger=logger)
        self.module.eval()
        return report

    def fit_data(self, adata: AnnData) -> FitData:
        """Aligned arrays for this predictor's vocabularies (validated against them)."""
        spec = self.spec
        labels = adata.obs[spec.perturbation_key].astype(str).to_numpy()
        return FitData(
            x=expression(adata, spec),
            counts=raw_counts(adata, spec),
            pert=self.encode_perturbations(labels).numpy(),
            ctx=self.encode_contexts(self._context_labels(adata)).numpy(),
            labels=labels,
            is_control=labels == spec.control,
        )

    @abc.abstractmethod
    def _build_module(self) -> None:
        """Create ``self.module`` from ``self.genes / perturbations / contexts`` and ``self.config``."""

    @abc.abstractmethod
    def _fit(
        self, data: FitData, *, epochs: int | None, batch_size: int, device: str, seed: int | None, logger: Any
    ) -> FitReport:
        """Fit ``self.module`` on ``data`` (already validated and encoded)."""

    # ----------------------------------------------------------------------------------------- predicting
    @torch.no_grad()
    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None, *,
                      clamp: bool = True) -> torch.Tensor:
        """Env-facing batched prediction, no grad.

        Parameters
        ----------
        x
            Tensor (B, G) float32, log1p-normalised expression of the input cells (controls for
            response models; the current cells for dynamic simulators).
        pert
            Tensor (B, P) float32 multi-hot over :attr:`perturbations` (a row of zeros = no perturbation).
        ctx
            Tensor (B,) int64 index into :attr:`contexts`, or None for the first context.
        clamp
            Clip the prediction at 0, since log1p expression cannot be negative (shift models such as
            ``baseline.mean`` can overshoot below 0). False gives the model's raw output (published
            mean-baseline figures are unclamped). Nothing is clipped for a model fitted on expression with
            negative values (scaled or centred data: :attr:`output_floor` is None), nor for a family whose
            output may be negative (class attribute :attr:`nonnegative` False).

        Returns
        -------
        Tensor (B, G) float32, the predicted expression.
        """
        self._check_fitted()
        if ctx is None:
            ctx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self._clamped(self.module.predict_batch(x, pert, ctx), clamp)

    def _clamped(self, y: torch.Tensor, clamp: bool) -> torch.Tensor:
        """The one place predictions are clipped at 0 (see :meth:`predict_batch`)."""
        if clamp and self.nonnegative and self.output_floor is not None:
            return y.clamp_min(self.output_floor)
        return y

    @torch.no_grad()
    def sample_batch(
        self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Like :meth:`predict_batch` but drawing cells from the predicted distribution.

        Deterministic predictors return their mean.
        """
        return self.predict_batch(x, pert, ctx)

    def predict(
        self,
        control: AnnData,
        perturbation: str | Sequence[str],
        *,
        context: str | None = None,
        mode: Literal["mean", "sample"] = "mean",
        n_samples: int | None = None,
        seed: int | None = None,
        clamp: bool = True,
    ) -> AnnData:
        """Predict how the cells of ``control`` respond to ``perturbation``.

        Parameters
        ----------
        control
            Input cells with this predictor's genes (usually control cells of one context).
        perturbation
            One label for every cell (``"A"`` or ``"A+B"``), or one label per cell.
        context
            The context of all cells; by default read from ``control.obs[spec.context_key]``, or the
            only context when the model has one.
        mode
            ``"mean"``: expected expression; ``"sample"``: draws from the predicted distribution.
        n_samples
            Predict this many cells, drawn with replacement from ``control`` (default: one per cell).
        seed
            Seed of the resampling and of ``mode="sample"``.
        clamp
            Clip predictions at 0 (log1p expression is never negative); False keeps the raw output.

        Returns
        -------
        AnnData with the predicted log1p expression in ``X``, the perturbation (and context) in ``obs``; the
        input's obs columns and names are kept (see :func:`~cellgym.predictors.base._anndata.prediction_anndata`).
        """
        self._check_fitted()
        check_genes(self.genes, control.var_names)
        if mode not in ("mean", "sample"):
            raise DataSpecError(f"mode must be 'mean' or 'sample', got {mode!r}.")
        rng = np.random.default_rng(seed)
        check_log1p(control, self.spec)
        x = expression(control, self.spec)
        labels = np.asarray([perturbation] * control.n_obs if isinstance(perturbation, str) else list(perturbation), dtype=object)
        if labels.shape[0] != control.n_obs:
            raise DataSpecError(f"got {labels.shape[0]} perturbation labels for {control.n_obs} cells; pass one label or one per cell.")
        if context is not None:
            ctx_labels = np.asarray([context] * control.n_obs, dtype=object)
        else:
            ctx_labels = np.asarray(self._context_labels(control), dtype=object)
        if n_samples is not None:
            rows = rng.integers(0, control.n_obs, size=n_samples)
            x, labels, ctx_labels = x[rows], labels[rows], ctx_labels[rows]
        pert = self.encode_perturbations(labels)
        ctx = self.encode_contexts(ctx_labels)
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        out = []
        for start in range(0, x.shape[0], PREDICT_CHUNK):
            sl = slice(start, start + PREDICT_CHUNK)
            xb = torch.from_numpy(x[sl])
            if mode == "sample":
                out.append(self._clamped(self.sample_batch(xb, pert[sl], ctx[sl], generator=generator), clamp))
            else:
                # the keyword only when asked, so predict_batch overrides without it keep working
                out.append(self.predict_batch(xb, pert[sl], ctx[sl], **({} if clamp else {"clamp": False})))
        y = torch.cat(out).cpu().numpy().astype(np.float32) if out else np.zeros((0, len(self.genes)), np.float32)
        return prediction_anndata(control, y, rows if n_samples is not None else None, labels, ctx_labels,
                                  self.spec, list(self.genes))

    # ------------------------------------------------------------------------------------------- encoding
    def encode_perturbations(self, labels: Sequence[str]) -> torch.Tensor:
        """Multi-hot (B, P) float32 for labels such as ``"control"``, ``"A"``, ``"A+B"``.

        Raises :class:`UnknownPerturbationError` (with the closest known names) for an unknown single.
        """
        index = {p: i for i, p in enumerate(self.perturbations)}
        unique, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
        rows = np.zeros((unique.size, len(self.perturbations)), dtype=np.float32)
        unknown: list[str] = []
        for r, label in enumerate(unique):
            for single in self.spec.split_label(label):
                if single in index:
                    rows[r, index[single]] = 1.0
                else:
                    unknown.append(single)
        if unknown:
            raise unknown_perturbation_error(sorted(set(unknown)), self.perturbations)
        return torch.from_numpy(rows[inverse.reshape(-1)])

    def encode_contexts(self, labels: Sequence[str]) -> torch.Tensor:
        """Context indices (B,) int64; an unknown context raises :class:`DataSpecError`."""
        index = {c: i for i, c in enumerate(self.contexts)}
        unique, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
        missing = [u for u in unique if u not in index]
        if missing:
            raise DataSpecError(
                f"unknown context(s) {missing}: the model knows {self.contexts}. Predict for a known context or "
                "refit with data from this one (use split='contexts' to hold out a context's perturbed cells)."
            )
        return torch.as_tensor(np.array([index[u] for u in unique], dtype=np.int64)[inverse.reshape(-1)])

    def _context_labels(self, adata: AnnData) -> np.ndarray:
        key = self.spec.context_key
        if key is not None and key in adata.obs:
            return adata.obs[key].astype(str).to_numpy()
        if len(self.contexts) != 1:
            raise DataSpecError(
                f"the model has {len(self.contexts)} contexts {self.contexts} but the cells have no "
                f"obs[{key!r}] column; pass context=<one of them>."
            )
        return np.full(adata.n_obs, self.contexts[0], dtype=object)

    def _check_fitted(self) -> None:
        if self.module is None:
            raise DataSpecError(f"{type(self).__name__} is not fitted: call fit(adata, spec) or load a saved one first.")

    # ---------------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write ``config.yaml`` (name, config, vocabularies, spec, versions) and ``weights.pt``."""
        self._check_fitted()
        config = {
            "predictor": self.name,
            "config": self.config,
            "spec": self.spec.to_dict(),
            "genes": list(self.genes),
            "perturbations": list(self.perturbations),
            "contexts": list(self.contexts),
            "output_floor": self.output_floor,
            "extra": self._extra_state(),
        }
        state = {**self.module.state_dict(), VOCABULARY_KEY: _vocabulary_digest(self.genes, self.perturbations, self.contexts)}
        return write_checkpoint(path, config, state)

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """Rebuild a saved predictor; fails with :class:`CheckpointError` if corrupt or incompatible.

        ``Predictor.load`` resolves the class from the registry name in ``config.yaml``; a subclass's
        ``load`` checks that the folder holds that subclass. No code from the folder is ever run.
        """
        config, state = read_checkpoint(path)
        digest = state.pop(VOCABULARY_KEY, None)  # absent in checkpoints written before it was added
        if digest is not None:
            try:
                same = torch.equal(digest, _vocabulary_digest(config["genes"], config["perturbations"], config["contexts"]))
            except (KeyError, TypeError) as exc:
                raise CheckpointError(f"{str(path)!r}: config.yaml lacks its vocabularies ({exc}); the folder is corrupt.") from exc
            if not same:
                raise CheckpointError(
                    f"{str(path)!r}: the genes, perturbations or contexts in config.yaml are not the ones the weights were "
                    "saved with (their checksum differs): the lists were edited or reordered. Restore config.yaml from "
                    "the saved folder, or refit."
                )
        name = config["predictor"]
        if cls is Predictor:
            from cellgym.registry import predictor_class

            klass = predictor_class(name)
        else:
            if name != cls.name:
                raise CheckpointError(f"{str(path)!r} holds a {name!r} predictor, not {cls.name!r}; load it with Predictor.load.")
            klass = cls
        try:
            obj = klass(**(config.get("config") or {}))
            obj.spec = DataSpec.from_dict(config["spec"])
            obj.genes = list(config["genes"])
            obj.perturbations = list(config["perturbations"])
            obj.contexts = list(config["contexts"])
            obj.output_floor = config.get("output_floor", 0.0)
            obj._load_extra_state(config.get("extra") or {})
            obj._build_module()
            obj.module.load_state_dict(state, strict=True)
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"{str(path)!r} does not fit {klass.__name__} ({type(exc).__name__}: {exc}). The folder is corrupt or "
                "from an incompatible version; refit and save again."
            ) from exc
        obj.module.eval()
        return obj

    def _extra_state(self) -> dict[str, Any]:
        """YAML-safe state beyond config and tensors (override when a model has some)."""
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:  # noqa: B027  (optional hook)
        """Inverse of :meth:`_extra_state`."""

    def __repr__(self) -> str:
        fitted = f"{len(self.genes)} genes, {len(self.perturbations)} perturbations, {len(self.contexts)} contexts"
        return f"{type(self).__name__}({self.name!r}, {fitted if self.module is not None else 'not fitted'})"
