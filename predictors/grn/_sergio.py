"""SERGIO-style stochastic gene-network simulation and technical noise.

Dibaeinia & Sinha (2020), "SERGIO: a single-cell expression simulator guided by gene regulatory
networks", Cell Systems 11:252-271. The model, as published:

- master regulators (genes without regulators) are produced at a rate ``b_{i,c}`` per cell type c;
- a target gene i is produced at ``P_i = sum_j |K_ij| h_ij(x_j)`` with the Hill function
  ``h = x^n / (x^n + k^n)`` for activation (K > 0) and ``1 - h`` for repression (K < 0); the
  half-response ``k_ij`` is the regulator's mean steady-state expression over cell types;
- expression follows the chemical Langevin equation with decay ``lambda``::

      dx_i = (P_i - lambda x_i) dt + q (sqrt(P_i) dW_a + sqrt(lambda x_i) dW_b)

  integrated by Euler-Maruyama and clipped at 0;
- the network is acyclic, so the noise-free steady state is computed layer by layer:
  ``x_i = P_i(x_regulators) / lambda`` (SERGIO initialises its cells there).

Technical noise (SERGIO section "Technical noise"): a log-normal library size per cell, logistic
dropout of low-expressed entries, and Poisson (UMI) counts — see :func:`technical_noise`.
Perturbations act on production: knockout ``P_i = 0``, knockdown ``P_i * factor``, overexpression
``P_i = factor * max production`` (this project's convention, not part of SERGIO).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.errors import DataSpecError

__all__ = ["LINEAGES_EDGES", "LINEAGES_RATES", "SERGIO_NETWORKS", "SergioNetwork", "technical_noise"]

# The shipped ``"lineages"`` network (this project's design, in SERGIO's model): three cell types set by
# four master regulators. G0, G1 and G2 are lineage masters (high, rate 1.0, in one type each; basal 0.1
# elsewhere); G3 is a co-factor, high in type0 and type2, basal in type1. Targets (n = 2 everywhere):
# per-lineage markers and cross-repressed markers (layer 1), co-factor-gated genes (layer 2), and
# integrators (layer 3). Identity is set by the masters alone (the network is acyclic, as SERGIO's are),
# so reprogramming type0 -> type1 takes G0_KO + G3_KO + G1_OE and type0 -> type2 takes G0_KO + G2_OE.
LINEAGES_RATES: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.1, 0.1),  # G0: lineage master of type0
    (0.1, 1.0, 0.1),  # G1: lineage master of type1
    (0.1, 0.1, 1.0),  # G2: lineage master of type2
    (1.0, 0.1, 1.0),  # G3: co-factor of type0 and type2
)
# target: ((regulator, K), ...); K < 0 represses
LINEAGES_EDGES: dict[int, tuple[tuple[int, float], ...]] = {
    4: ((0, 3.0),),
    5: ((0, 2.0), (1, -2.0)),
    6: ((1, 3.0),),
    7: ((1, 2.0), (2, -2.0)),
    8: ((2, 3.0),),
    9: ((2, 2.0), (0, -2.0)),
    10: ((3, 3.0),),
    11: ((3, 2.0), (1, -1.5)),
    12: ((4, 2.0), (10, 2.0)),
    13: ((8, 2.0), (10, 2.0)),
    14: ((6, 3.0), (10, -2.0)),
    15: ((5, 2.0), (7, 2.0)),
    16: ((9, -2.0), (11, 2.0)),
    17: ((12, 2.0), (13, 2.0)),
    18: ((14, 3.0),),
    19: ((15, 1.5), (16, 1.5), (17, -1.0)),
}
SERGIO_NETWORKS = ("lineages",)


@dataclass
class SergioNetwork:
    """A SERGIO gene network: signed Hill edges into targets, master-regulator production per cell type.

    Attributes
    ----------
    genes
        Gene names (G): ``G<id>`` for file ids.
    src, tgt
        int64 (E,) regulator and target of each edge.
    strength, hill
        float (E,) K (negative = repression) and Hill coefficient n.
    master
        int64 (M,) master regulators; ``rates`` float (M, C) their production rate per cell type.
    decay
        lambda.
    half
        float (E,) half-response of each edge (filled by :meth:`fill_half_responses`).
    """

    genes: list[str]
    src: np.ndarray
    tgt: np.ndarray
    strength: np.ndarray
    hill: np.ndarray
    master: np.ndarray
    rates: np.ndarray
    decay: float = 0.8
    half: np.ndarray | None = None

    @property
    def n_genes(self) -> int:
        """G."""
        return len(self.genes)

    @property
    def n_types(self) -> int:
        """C, the number of cell types."""
        return self.rates.shape[1]

    # ------------------------------------------------------------------------------------------ reading
    @classmethod
    def from_folder(cls, folder: str | Path, decay: float = 0.8) -> SergioNetwork:
        """Read ``Interaction_cID_*.txt`` and ``Regs_cID_*.txt`` from a SERGIO data-set folder."""
        folder = Path(folder)
        inter = sorted(folder.glob("Interaction_cID_*.txt"))
        regs = sorted(folder.glob("Regs_cID_*.txt"))
        if len(inter) != 1 or len(regs) != 1:
            raise DataSpecError(
                f"{folder}: expected one Interaction_cID_*.txt and one Regs_cID_*.txt (SERGIO's input files), found "
                f"{[p.name for p in inter + regs]}. Pass the folder of one SERGIO data set, e.g. .../sergio_ds1, "
                f"or a shipped network name {list(SERGIO_NETWORKS)}."
            )
        return cls.from_files(inter[0], regs[0], decay=decay)

    @classmethod
    def from_files(cls, interactions: str | Path, regulators: str | Path, decay: float = 0.8) -> SergioNetwork:
        """Parse SERGIO's files: per target ``id, n_regs, reg ids..., K..., n...``; per master ``id, rate per type...``."""
        src, tgt, k, n = [], [], [], []
        for line_no, line in enumerate(Path(interactions).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            vals = _floats(line, interactions, line_no)
            r = int(vals[1]) if len(vals) > 1 else -1
            if r < 1 or len(vals) != 2 + 3 * r:
                raise DataSpecError(
                    f"{interactions}, line {line_no}: expected 'target, n_regs, n_regs ids, n_regs K, n_regs hill' "
                    f"({2 + 3 * max(r, 1)} numbers), got {len(vals)}."
                )
            t = int(vals[0])
            src += [int(v) for v in vals[2 : 2 + r]]
            tgt += [t] * r
            k += vals[2 + r : 2 + 2 * r]
            n += vals[2 + 2 * r :]
        master, rates = [], []
        for line_no, line in enumerate(Path(regulators).read_text().splitlines(), start=1):
            if line.strip():
                vals = _floats(line, regulators, line_no)
                master.append(int(vals[0]))
                rates.append(vals[1:])
        if len({len(r) for r in rates}) != 1 or not rates[0]:
            raise DataSpecError(f"{regulators}: every master regulator needs one production rate per cell type (same count).")
        n_genes = max([*src, *tgt, *master]) + 1
        if set(master) & set(tgt):
            raise DataSpecError(f"{regulators}: genes {sorted(set(master) & set(tgt))[:5]} are master regulators and targets.")
        net = cls(
            genes=[f"G{i}" for i in range(n_genes)], src=np.array(src), tgt=np.array(tgt), strength=np.array(k),
            hill=np.array(n), master=np.array(master), rates=np.array(rates, dtype=np.float64), decay=decay,
        )
        net.fill_half_responses()
        return net

    @classmethod
    def random(cls, n_genes: int = 20, n_master: int = 3, n_types: int = 3, seed: int = 0, decay: float = 0.8) -> SergioNetwork:
        """A random layered SERGIO network (seeded), for the default world with no files.

        Master regulators get rates ~ U(0.2, 1) per cell type (DS1's range); each target has 1-3
        regulators among earlier genes, |K| ~ U(1, 5) with 70% activation, Hill n = 2 (SERGIO's default).
        """
        rng = np.random.default_rng(seed)
        src, tgt = [], []
        for t in range(n_master, n_genes):
            regs = rng.choice(t, size=min(t, int(rng.integers(1, 4))), replace=False)
            src += regs.tolist()
            tgt += [t] * len(regs)
        e = len(src)
        sign = np.where(rng.random(e) < 0.7, 1.0, -1.0)
        net = cls(
            genes=[f"G{i}" for i in range(n_genes)], src=np.array(src), tgt=np.array(tgt),
            strength=sign * rng.uniform(1, 5, e), hill=np.full(e, 2.0), master=np.arange(n_master),
            rates=rng.uniform(0.2, 1.0, (n_master, n_types)), decay=decay,
        )
        net.fill_half_responses()
        return net

    @classmethod
    def lineages(cls, decay: float = 0.8) -> SergioNetwork:
        """The shipped ``"lineages"`` network: 20 genes, 4 master regulators, 3 cell types (see ``LINEAGES_EDGES``)."""
        src = [r for t, regs in LINEAGES_EDGES.items() for r, _ in regs]
        tgt = [t for t, regs in LINEAGES_EDGES.items() for _ in regs]
        k = [v for regs in LINEAGES_EDGES.values() for _, v in regs]
        net = cls(
            genes=[f"G{i}" for i in range(20)], src=np.array(src), tgt=np.array(tgt), strength=np.array(k),
            hill=np.full(len(k), 2.0), master=np.arange(4), rates=np.array(LINEAGES_RATES), decay=decay,
        )
        net.fill_half_responses()
        return net

    # ------------------------------------------------------------------------------------------ steady state
    def order(self) -> list[int]:
        """Genes in topological order (regulators before targets); a cycle raises."""
        indeg = np.bincount(self.tgt, minlength=self.n_genes)
        ready = [g for g in range(self.n_genes) if indeg[g] == 0]
        out: list[int] = []
        children: dict[int, list[int]] = {}
        for s, t in zip(self.src.tolist(), self.tgt.tolist(), strict=True):
            children.setdefault(s, []).append(t)
        while ready:
            g = ready.pop()
            out.append(g)
            for c in children.get(g, []):
                indeg[c] -= 1
                if indeg[c] == 0:
                    ready.append(c)
        if len(out) != self.n_genes:
            raise DataSpecError("the SERGIO network has a cycle; SERGIO's steady state needs an acyclic network.")
        return out

    def production(self, x: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """Noise-free production (B, G) of cells ``x`` (B, G) in cell types ``ctx`` (B,) (numpy reference)."""
        xr = np.clip(x[:, self.src], 0, None) ** self.hill
        h = xr / (xr + self.half**self.hill)
        act = np.abs(self.strength) * np.where(self.strength > 0, h, 1 - h)
        p = np.zeros_like(x)
        np.add.at(p.T, self.tgt, act.T)
        p[:, self.master] = self.rates[:, ctx].T
        return p

    def steady_state(self, ctx: int, scale: np.ndarray | None = None, force: np.ndarray | None = None) -> np.ndarray:
        """Analytic noise-free steady state (G,) of cell type ``ctx``, computed layer by layer.

        ``scale`` (G,) multiplies production (0 = knockout); where ``force`` (G,) is not NaN it replaces it.
        """
        x = np.zeros(self.n_genes)
        for g in self.order():
            x[g] = self._gene_production(g, x, ctx, scale, force) / self.decay
        return x

    def _gene_production(self, g: int, x: np.ndarray, ctx: int, scale: np.ndarray | None, force: np.ndarray | None) -> float:
        if force is not None and not np.isnan(force[g]):
            return float(force[g])
        if g in set(self.master.tolist()):
            p = float(self.rates[list(self.master).index(g), ctx])
        else:
            e = self.tgt == g
            xr = x[self.src[e]] ** self.hill[e]
            h = xr / (xr + self.half[e] ** self.hill[e])
            p = float((np.abs(self.strength[e]) * np.where(self.strength[e] > 0, h, 1 - h)).sum())
        return p * (1.0 if scale is None else float(scale[g]))

    def fill_half_responses(self) -> None:
        """SERGIO's half-responses: each edge's k is its regulator's mean steady state over cell types."""
        self.half = np.ones(len(self.src))
        x = np.zeros((self.n_types, self.n_genes))
        for g in self.order():  # a gene's out-edges are needed only after the gene's own level is known
            for c in range(self.n_types):
                x[c, g] = self._gene_production(g, x[c], c, None, None) / self.decay
            out = self.src == g
            self.half[out] = max(float(x[:, g].mean()), 1e-6)

    def max_production(self) -> np.ndarray:
        """(G,) largest production each gene can have: max rate over types, or the sum of |K|."""
        p = np.zeros(self.n_genes)
        np.add.at(p, self.tgt, np.abs(self.strength))
        p[self.master] = self.rates.max(1)
        return p


def _floats(line: str, path: str | Path, line_no: int) -> list[float]:
    try:
        return [float(v) for v in line.replace(",", " ").split()]
    except ValueError as exc:
        raise DataSpecError(f"{path}, line {line_no}: expected comma-separated numbers, got {line[:60]!r}.") from exc


def technical_noise(
    expr: np.ndarray,
    rng: np.random.Generator,
    *,
    library_mean: float = 7.0,
    library_sigma: float = 0.3,
    dropout_shape: float = 8.0,
    dropout_percentile: float = 20.0,
    enabled: bool = True,
) -> np.ndarray:
    """Integer UMI counts (N, G) int64 from noise-free expression (N, G) >= 0, after SERGIO's technical noise.

    1. library size: each cell's expression is rescaled to a total ``L ~ LogNormal(library_mean, library_sigma)``;
    2. dropout: an entry is kept with probability ``1 / (1 + exp(-shape (log1p(x) - m)))`` where ``m`` is the
       ``dropout_percentile`` of ``log1p(x)`` over the matrix;
    3. counts ~ Poisson(x).

    ``enabled=False`` keeps only Poisson sampling at the fixed library size ``exp(library_mean)``.
    """
    expr = np.clip(np.asarray(expr, dtype=np.float64), 0, None)
    total = expr.sum(1, keepdims=True)
    total[total == 0] = 1.0
    if enabled:
        lib = rng.lognormal(library_mean, library_sigma, size=(expr.shape[0], 1))
    else:
        lib = np.full((expr.shape[0], 1), np.exp(library_mean))
    x = expr / total * lib
    if enabled:
        logx = np.log1p(x)
        mid = np.percentile(logx, dropout_percentile)
        keep = rng.random(x.shape) < 1.0 / (1.0 + np.exp(-dropout_shape * (logx - mid)))
        x = x * keep
    return rng.poisson(x).astype(np.int64)

