"""Boolean gene-network models: ``Gene<TAB>Rule`` files, synchronous/asynchronous updates, attractors.

Each rule is compiled once to a truth table over its regulators; genes with the same number of
regulators are stepped together with one gather, so an update of B cells is a handful of tensor ops
and no Python loop over cells.
"""

from __future__ import annotations

import ast as _pyast
import collections
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..base.errors import DataSpecError
from ._rules import Node, evaluate, names_in, parse_rule, truth_table

__all__ = ["MAX_ENUMERATE_GENES", "Attractor", "BooleanNetwork", "model_path"]

MAX_ENUMERATE_GENES = 20  # attractors() enumerates all 2**G states up to this many genes
MAX_STEPS = 100_000  # synchronous steps allowed to reach the attractors from given states
UNLABELLED = "other"  # fate label of a state that matches no fate rule


def model_path(name: str) -> Path:
    """Path of a model shipped in ``cellgym.predictors.grn.models`` (e.g. ``"krumsiek11"``)."""
    path = Path(str(resources.files("cellgym.predictors.grn") / "models" / f"{name}.txt"))
    if not path.exists():
        shipped = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        raise DataSpecError(f"no shipped Boolean model {name!r}; shipped models are {shipped}. Pass a file path instead.")
    return path


@dataclass(frozen=True)
class Attractor:
    """A fixed point (``states`` has one row) or a cycle of a Boolean network under synchronous update.

    Attributes
    ----------
    states
        bool array (L, G): the states of the cycle in update order (L = 1 for a fixed point).
    basin
        Number of the enumerated (or given) start states that end in it.
    label
        Fate name from the model's fate rules (``"other"`` when none matches).
    """

    states: np.ndarray
    basin: int
    label: str

    @property
    def is_fixed_point(self) -> bool:
        """True for a steady state (cycle length 1)."""
        return self.states.shape[0] == 1


def _read_table(path: Path, header: str) -> list[tuple[str, str]]:
    """Rows ``(first, second)`` of a tab-separated two-column file with a header line."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines or not lines[0].split("\t")[0].strip().lower() == header.lower():
        got = lines[0][:60] if lines else "an empty file"
        raise DataSpecError(
            f"{path}: expected a tab-separated file with header '{header}<TAB>...', got {got!r}. "
            "Boolean models are written 'Gene<TAB>Rule', one gene per line."
        )
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        parts = line.split("\t", 1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DataSpecError(f"{path}, line {i}: expected '<name><TAB><rule>', got {line!r}.")
        rows.append((parts[0].strip(), parts[1].strip()))
    return rows


def _read_ics(path: Path) -> dict[str, float]:
    """BoolODE initial conditions: ``Genes<TAB>Values`` with Python-style lists, e.g. ``['A','B']  [1,1]``."""
    out: dict[str, float] = {}
    for i, (genes, values) in enumerate(_read_table(path, "Genes"), start=2):
        try:  # literal_eval parses literals only (no names, calls or operators): safe on file text
            names, vals = _pyast.literal_eval(genes), _pyast.literal_eval(values)
        except (ValueError, SyntaxError) as exc:
            raise DataSpecError(f"{path}, line {i}: expected ['gene', ...]<TAB>[value, ...], got {genes!r} {values!r}.") from exc
        if len(names) != len(vals):
            raise DataSpecError(f"{path}, line {i}: {len(names)} genes but {len(vals)} values.")
        out.update({str(n): float(v) for n, v in zip(names, vals, strict=True)})
    return out


class BooleanNetwork:
    """A Boolean gene-regulatory network ``x_i(t+1) = f_i(x(t))``.

    Genes referenced in a rule but without a rule of their own are inputs: they keep their value
    (rule ``g = g``) and are listed in :attr:`inputs`.

    Parameters
    ----------
    rules
        Gene -> rule text, in gene order.
    initial_conditions
        Gene -> value of a start state (other genes off), as in BoolODE ``*_ics.txt`` files.
    fates
        Fate name -> rule text over the genes, used to label states (first match wins).
    name
        A name for messages.

    Attributes
    ----------
    genes
        Gene names (G), the rule targets in file order followed by the inputs.
    rules
        Gene -> rule text (inputs map to their own name).
    regulators
        Gene -> the genes its rule reads, in order of appearance.
    """

    def __init__(
        self,
        rules: dict[str, str],
        *,
        initial_conditions: dict[str, float] | None = None,
        fates: dict[str, str] | None = None,
        name: str = "model",
    ) -> None:
        if not rules:
            raise DataSpecError(f"{name}: the model has no rules; expected at least one 'Gene<TAB>Rule' line.")
        self.name = name
        trees: dict[str, Node] = {g: parse_rule(r, f"{name}, rule of {g!r}") for g, r in rules.items()}
        self.inputs: list[str] = []
        for tree in trees.values():
            for n in names_in(tree):
                if n not in trees and n not in self.inputs:
                    self.inputs.append(n)
        for n in self.inputs:
            trees[n] = ("var", n)
        self.genes: list[str] = list(trees)
        self.rules: dict[str, str] = {g: rules.get(g, g) for g in self.genes}
        self.regulators: dict[str, list[str]] = {g: names_in(t) for g, t in trees.items()}
        self._index = {g: i for i, g in enumerate(self.genes)}
        self.initial_conditions = dict(initial_conditions or {})
        unknown = sorted(set(self.initial_conditions) - set(self.genes))
        if unknown:
            raise DataSpecError(f"{name}: initial conditions name genes {unknown} that are not in the model {self.genes}.")
        self.fates: dict[str, Node] = {}
        for fate, rule in (fates or {}).items():
            tree = parse_rule(rule, f"{name}, fate {fate!r}")
            missing = [n for n in names_in(tree) if n not in self._index]
            if missing:
                raise DataSpecError(f"{name}: fate {fate!r} reads genes {missing} that are not in the model.")
            self.fates[fate] = tree
        # truth tables grouped by number of regulators k: (gene index (g_k,), regulators (g_k, k), table (g_k, 2**k))
        groups: dict[int, list[int]] = {}
        for i, g in enumerate(self.genes):
            groups.setdefault(len(self.regulators[g]), []).append(i)
        self.groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for k, members in sorted(groups.items()):
            regs = torch.tensor([[self._index[r] for r in self.regulators[self.genes[i]]] for i in members], dtype=torch.long)
            tables = np.stack([truth_table(trees[self.genes[i]], self.regulators[self.genes[i]]) for i in members])
            self.groups.append((torch.tensor(members, dtype=torch.long), regs.reshape(len(members), k), torch.from_numpy(tables)))

    # ------------------------------------------------------------------------------------------ reading
    @classmethod
    def from_file(cls, path: str | Path) -> BooleanNetwork:
        """Read a ``Gene<TAB>Rule`` file; ``<stem>_ics.txt`` and ``<stem>_fates.txt`` beside it are read too."""
        path = Path(path)
        if not path.is_file():
            raise DataSpecError(f"Boolean model file {str(path)!r} does not exist; pass a 'Gene<TAB>Rule' file.")
        rows = _read_table(path, "Gene")
        dup = sorted({g for g, _ in rows if [h for h, _ in rows].count(g) > 1})
        if dup:
            raise DataSpecError(f"{path}: genes {dup} have more than one rule; write one rule per gene.")
        ics_path = path.with_name(f"{path.stem}_ics.txt")
        fates_path = path.with_name(f"{path.stem}_fates.txt")
        ics = _read_ics(ics_path) if ics_path.exists() else None
        fates = dict(_read_table(fates_path, "Fate")) if fates_path.exists() else None
        return cls(dict(rows), initial_conditions=ics, fates=fates, name=path.name)

    @classmethod
    def from_rules(cls, rules: dict[str, str] | str, **kwargs: object) -> BooleanNetwork:
        """From a dict ``{gene: rule}`` or ``Gene<TAB>Rule`` text (header optional)."""
        if isinstance(rules, str):
            rows: dict[str, str] = {}
            for i, line in enumerate(ln for ln in rules.splitlines() if ln.strip()):
                parts = line.split("\t", 1) if "\t" in line else line.split(None, 1)
                if len(parts) != 2:
                    raise DataSpecError(f"rules text, line {i + 1}: expected '<gene><TAB><rule>', got {line!r}.")
                if i == 0 and parts[0].strip().lower() == "gene":
                    continue
                rows[parts[0].strip()] = parts[1].strip()
            rules = rows
        return cls(dict(rules), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def krumsiek11(cls) -> BooleanNetwork:
        """The myeloid differentiation model of Krumsiek et al. 2011 (PLoS ONE 6:e22649), shipped with cellgym.

        11 genes; Table 1 of the paper. Fates: erythrocyte, megakaryocyte, monocyte, granulocyte.
        """
        return cls.from_file(model_path("krumsiek11"))

    # ------------------------------------------------------------------------------------------ states
    @property
    def n_genes(self) -> int:
        """G."""
        return len(self.genes)

    def index(self, genes: str | list[str]) -> list[int]:
        """Column indices of gene names; an unknown name raises with the model's genes."""
        names = [genes] if isinstance(genes, str) else list(genes)
        bad = [g for g in names if g not in self._index]
        if bad:
            raise DataSpecError(f"{self.name}: unknown gene(s) {bad}; the model's genes are {self.genes}.")
        return [self._index[g] for g in names]

    def initial_state(self) -> torch.Tensor:
        """bool (G,): genes with a positive initial condition on, the rest off."""
        s = torch.zeros(self.n_genes, dtype=torch.bool)
        for g, v in self.initial_conditions.items():
            s[self._index[g]] = v > 0
        return s

    def state_from_genes(self, on: list[str]) -> torch.Tensor:
        """bool (G,) with exactly the genes ``on`` set."""
        s = torch.zeros(self.n_genes, dtype=torch.bool)
        s[self.index(on)] = True
        return s

    # ------------------------------------------------------------------------------------------ updates
    def evaluate(self, states: torch.Tensor) -> torch.Tensor:
        """Every rule's output: bool (B, G) from bool states (B, G)."""
        out = torch.empty_like(states)
        for members, regs, table in self.groups:
            k = regs.shape[1]
            if k == 0:
                out[:, members] = table[:, 0]
                continue
            weights = 2 ** torch.arange(k, device=states.device)
            code = (states[:, regs].long() * weights).sum(-1)  # (B, g_k)
            out[:, members] = torch.gather(table.to(states.device).expand(states.shape[0], -1, -1), 2, code.unsqueeze(-1)).squeeze(-1)
        return out

    @staticmethod
    def clamp(states: torch.Tensor, clamp_on: torch.Tensor | None, clamp_off: torch.Tensor | None) -> torch.Tensor:
        """Force genes on (``clamp_on``) and off (``clamp_off``); masks are bool (G,) or (B, G). Off wins."""
        if clamp_on is not None:
            states = states | clamp_on
        if clamp_off is not None:
            states = states & ~clamp_off
        return states

    def step_sync(
        self, states: torch.Tensor, clamp_on: torch.Tensor | None = None, clamp_off: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One synchronous update of all genes: bool (B, G) -> bool (B, G), clamps applied after the update."""
        self._check_states(states)
        return self.clamp(self.evaluate(states), clamp_on, clamp_off)

    def step_async(
        self,
        states: torch.Tensor,
        clamp_on: torch.Tensor | None = None,
        clamp_off: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One general-asynchronous update: each cell updates one gene drawn uniformly (B, G) -> (B, G)."""
        self._check_states(states)
        pick = torch.randint(0, self.n_genes, (states.shape[0],), generator=generator, device=states.device)
        chosen = torch.nn.functional.one_hot(pick, self.n_genes).bool()
        new = torch.where(chosen, self.evaluate(states), states)
        return self.clamp(new, clamp_on, clamp_off)

    def _check_states(self, states: torch.Tensor) -> None:
        if states.dtype != torch.bool or states.ndim != 2 or states.shape[1] != self.n_genes:
            raise DataSpecError(
                f"{self.name}: states must be a bool tensor of shape (B, {self.n_genes}); got {states.dtype} "
                f"{tuple(states.shape)}. Convert with states = x > 0.5."
            )

    # ------------------------------------------------------------------------------------------ fates
    def label(self, states: torch.Tensor) -> list[str]:
        """Fate name of each state (B, G) bool: the first fate rule it satisfies, else ``"other"``."""
        states = torch.as_tensor(states).bool()
        env = {g: states[:, i] for i, g in enumerate(self.genes)}
        like = torch.zeros(states.shape[0], dtype=torch.bool)
        labels = np.full(states.shape[0], UNLABELLED, dtype=object)
        assigned = torch.zeros(states.shape[0], dtype=torch.bool)
        for fate, tree in self.fates.items():
            hit = evaluate(tree, env, like) & ~assigned
            labels[hit.numpy()] = fate
            assigned |= hit
        return labels.tolist()

    # ------------------------------------------------------------------------------------------ attractors
    def _encode(self, states: torch.Tensor) -> torch.Tensor:
        """int64 code of each state (B, G); only for G <= 62 (enumeration is limited to 20 genes)."""
        return (states.long() << torch.arange(self.n_genes)).sum(-1)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return ((codes.unsqueeze(-1) >> torch.arange(self.n_genes)) & 1).bool()

    def attractors(
        self,
        clamp_on: torch.Tensor | None = None,
        clamp_off: torch.Tensor | None = None,
        *,
        states: torch.Tensor | None = None,
    ) -> list[Attractor]:
        """Fixed points and cycles under synchronous update (with optional clamps).

        Parameters
        ----------
        clamp_on, clamp_off
            bool (G,) genes forced on / off (overexpression / knockout).
        states
            bool (B, G) start states; by default all 2**G states are enumerated (G <= 20).

        Returns
        -------
        Attractors sorted by basin size (largest first); ``basin`` counts the start states that reach it.
        """
        g = self.n_genes
        if states is None:
            if g > MAX_ENUMERATE_GENES:
                raise DataSpecError(
                    f"{self.name} has {g} genes: enumerating 2**{g} states is too many (limit {MAX_ENUMERATE_GENES}). "
                    "Pass states=<bool (B, G) start states> to find the attractors they reach."
                )
            codes = torch.arange(2**g, dtype=torch.long)
            succ = self._encode(self.step_sync(self._decode(codes), clamp_on, clamp_off))
            # pointer doubling: after m rounds far[x] = f^(2**m)(x); 2**(g+1) steps exceed any transient
            far = succ
            for _ in range(g + 1):
                far = far[far]
            ends: list = far.tolist()
            table = succ.tolist()

            def step(key: int) -> int:
                return table[key]

            def decode(keys: list) -> torch.Tensor:
                return self._decode(torch.tensor(keys))
        else:
            self._check_states(states)
            # Brent's cycle detection for the whole batch: the reference moves to the current states at
            # steps 1, 2, 4, ...; once every cell is back at its reference, every cell is on its attractor
            s = ref = states
            power, lam = 1, 0
            for _ in range(MAX_STEPS):
                s = self.step_sync(s, clamp_on, clamp_off)
                lam += 1
                if torch.equal(s, ref):
                    break
                if lam == power:
                    ref, power, lam = s, power * 2, 0
            else:
                raise DataSpecError(f"{self.name}: the given states did not reach their attractors within {MAX_STEPS} steps.")
            ends = [row.tobytes() for row in s.numpy()]  # bytes keys: any number of genes

            def step(key: bytes) -> bytes:
                row = torch.from_numpy(np.frombuffer(key, dtype=bool).copy())[None]
                return self.step_sync(row, clamp_on, clamp_off)[0].numpy().tobytes()

            def decode(keys: list) -> torch.Tensor:
                return torch.from_numpy(np.stack([np.frombuffer(k, dtype=bool) for k in keys]))

        # walk each end state around its cycle (cycles are few and short)
        cycle_of: dict = {}
        cycles: dict = {}
        for start in dict.fromkeys(ends):
            if start in cycle_of:
                continue
            path, seen = [start], {start: 0}
            while True:
                nxt = step(path[-1])
                if nxt in seen or nxt in cycle_of:
                    break
                seen[nxt] = len(path)
                path.append(nxt)
            if nxt in cycle_of:  # ran into a known cycle
                key = cycle_of[nxt]
            else:
                cycle = path[seen[nxt]:]
                key = min(cycle)
                first = cycle.index(key)
                cycles[key] = cycle[first:] + cycle[:first]
            for c in path:
                cycle_of[c] = key
        basins = collections.Counter(cycle_of[e] for e in ends)
        out = []
        for key, cycle in cycles.items():
            st = decode(cycle)
            labels = set(self.label(st))  # a cycle is labelled only when all its states share the fate
            label = labels.pop() if len(labels) == 1 else UNLABELLED
            out.append(Attractor(states=st.numpy(), basin=basins[key], label=label))
        return sorted(out, key=lambda a: (-a.basin, a.states.shape[0]))

    def __repr__(self) -> str:
        return f"BooleanNetwork({self.name!r}, {self.n_genes} genes, {len(self.inputs)} inputs)"



