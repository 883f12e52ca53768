"""Continuous (ODE / SDE) dynamics derived from a Boolean network, after BoolODE.

Pratapa, Jalihal, Law, Bharadwaj & Murali (2020), "Benchmarking algorithms for gene regulatory
network inference from single-cell transcriptomic data", Nature Methods 17:147-154 (BoolODE).

BoolODE turns each rule's truth table into a normalised sum of products of Hill terms
(Shea-Ackers form): every row of the truth table is a configuration of bound regulators with weight
``prod_{j bound} (x_j / k)^n``; the production of gene i is the weight of the rows where the rule is
true divided by the weight of all rows. Dividing through by ``prod_j (1 + (x_j/k)^n)`` shows this is
exactly the truth table's multilinear extension evaluated at the Hill occupancies
``p_j = x_j^n / (k^n + x_j^n)``::

    f_i(x) = sum_r T_i[r] prod_j p_j^{r_j} (1 - p_j)^{1 - r_j}

which is how it is computed here (one contraction per regulator, all cells at once). Simplifications
against BoolODE, documented: one species per gene (no separate mRNA / protein), production and decay
rates equal to 1 so that concentrations live in [0, 1], every interaction has threshold k = 0.5 and
Hill coefficient n = 10 (BoolODE's default n), and all row weights alpha = 1. Dynamics:

    dx_i = (m_i f_i(x) - x_i) dt + sigma (sqrt(m_i f_i(x)) + sqrt(x_i)) dW_i

(BoolODE's chemical-Langevin-shaped noise), integrated by Euler-Maruyama, clipped at 0. ``m_i`` is 1,
0 for a knockout, the knockdown factor for a knockdown; an overexpressed gene has ``m_i f_i = 1``.

Doses (graded perturbations, a multi-hot column set to d in [0, 1]): a knockout of dose d scales the
production by ``1 - d`` (d = 1 is the knockout, d < 1 a knockdown of that strength) and an
overexpression of dose d mixes ``(1 - d) m_i f_i + d`` (d = 1 forces production 1); a knockout still
wins over an overexpression of the same gene. With 0/1 columns this is exactly the rule above.
"""

from __future__ import annotations

import torch

from ._boolean import BooleanNetwork

__all__ = ["HILL_K", "HILL_N", "hill_production", "sde_step"]

HILL_K = 0.5  # half-activation threshold of every interaction (half the maximal concentration 1)
HILL_N = 10.0  # Hill coefficient (BoolODE's default)


def hill_production(net: BooleanNetwork, x: torch.Tensor) -> torch.Tensor:
    """Normalised production f(x) in [0, 1] of every gene: (B, G) float -> (B, G) float."""
    xn = x.clamp_min(0.0) ** HILL_N
    p_all = xn / (HILL_K**HILL_N + xn)  # (B, G) occupancy of each regulator
    out = torch.empty_like(x)
    for members, regs, table in net.groups:
        k = regs.shape[1]
        t = table.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, g_k, 2**k)
        for j in range(k - 1, -1, -1):  # contract the highest bit first: rows [bit j = 0 | bit j = 1]
            half = t.shape[-1] // 2
            p = p_all[:, regs[:, j]].unsqueeze(-1)  # (B, g_k, 1)
            t = t[..., :half] * (1.0 - p) + t[..., half:] * p
        out[:, members] = t[..., 0]
    return out


def sde_step(
    net: BooleanNetwork,
    x: torch.Tensor,
    scale: torch.Tensor,
    overexpression: torch.Tensor,
    dt: float,
    noise: float,
    generator: torch.Generator | None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Euler-Maruyama step (noise = 0: explicit Euler of the ODE).

    Parameters
    ----------
    x
        (B, G) float concentrations.
    scale
        (B, G) production factor m of the knockdowns (1 normal, in between knockdown).
    overexpression
        (B, G) overexpression level in [0, 1] (bool: overexpressed genes, production 1).
    keep
        (B, G) share of production left by knockouts, ``1 - dose`` (None: no knockout).
    """
    oe = overexpression.to(x.dtype)
    prod = oe + (1.0 - oe) * scale * hill_production(net, x)
    if keep is not None:
        prod = keep * prod
    drift = prod - x
    if noise > 0:
        dw = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) * dt**0.5
        x = x + drift * dt + noise * (prod.sqrt() + x.clamp_min(0.0).sqrt()) * dw
    else:
        x = x + drift * dt
    return x.clamp_min(0.0)
