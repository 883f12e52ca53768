"""CellGen's alternating WGAN updates, as the ``step=`` hook of the shared fit loop (``train_module``).

Each minibatch of real target cells (with their condition) takes one critic step; every ``n_critic``-th
minibatch also takes one generator step (Gulrajani et al. 2017, Algorithm 1). The generator's input
cells are drawn at random from the source pool of each target row (control cells in perturbation mode,
the previous time point's cells in trajectory mode): unpaired, linked only through the condition.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..base import CellgymError, LossOutput
from ..metrics import energy_distance_torch
from ._module import CellGenModule

__all__ = ["GANDivergedError", "GANStep", "GANWeights"]


class GANDivergedError(CellgymError, RuntimeError):
    """A GAN loss became NaN or infinite; the module was restored to its last good (finite) state."""


@dataclass(frozen=True)
class GANWeights:
    """Weights of CellGen's loss terms.

    Attributes
    ----------
    gp
        Gradient penalty lambda (WGAN-GP: 10, Gulrajani et al. 2017) or WGAN-div's k (2, Wu et al. 2018).
    identity
        L1 between ``G(x, control)`` and a control cell ``x`` (the control condition maps a control
        cell to itself).
    cycle
        L1 between ``G(G(x, c), control)`` and ``x`` (back to control; StarGAN's reconstruction).
    distribution
        Energy distance (Székely & Rizzo 2013; U-statistic) between the generated and the real cells of
        each condition in the batch: a direct distribution-matching term next to the critic (CellGen's
        losses do not have it; the ablation in the report of issue #11 shows what it adds).
    drift
        Small penalty on the squared real scores that keeps the unbounded critic from drifting
        (Karras et al. 2018: 1e-3).
    """

    gp: float = 10.0
    identity: float = 1.0
    cycle: float = 1.0
    distribution: float = 0.0
    drift: float = 1e-3


class GANStep:
    """The step hook: one critic update per batch, one generator update every ``n_critic`` batches.

    Parameters
    ----------
    module
        The :class:`CellGenModule`.
    sources
        (M, G) float32 candidate input cells, grouped by pool through ``pool_start`` / ``pool_size``.
    pool_order, pool_start, pool_size
        ``sources[pool_order[pool_start[k] : pool_start[k] + pool_size[k]]]`` are pool k's cells.
    critic_optimizer
        Optimiser of the critic's parameters (the generator's comes from the fit loop).
    n_critic
        Critic steps per generator step.
    weights
        :class:`GANWeights`.
    penalty
        ``"gp"`` (WGAN-GP, one-centred gradient norm on interpolates) or ``"div"`` (WGAN-div,
        ``k E|grad|^p`` with p = 6 on interpolates).
    unseen_rate
        Probability that a training row's single perturbation is shown through the generic
        "unseen" embedding instead of its own (learns the path used for declared unseen ones).
    generator
        Seeded torch generator for the source draws, interpolation weights and unseen drops.
    """

    def __init__(
        self,
        module: CellGenModule,
        sources: torch.Tensor,
        pool_order: torch.Tensor,
        pool_start: torch.Tensor,
        pool_size: torch.Tensor,
        critic_optimizer: torch.optim.Optimizer,
        *,
        n_critic: int,
        weights: GANWeights,
        penalty: str,
        unseen_rate: float,
        generator: torch.Generator,
    ) -> None:
        self.sources, self.pool_order, self.pool_start, self.pool_size = sources, pool_order, pool_start, pool_size
        self.critic_optimizer = critic_optimizer
        self.n_critic, self.weights, self.penalty, self.unseen_rate = n_critic, weights, penalty, unseen_rate
        self.generator = generator
        self.count = 0
        self.last_generator: dict[str, torch.Tensor] = {}
        self.good_state = copy.deepcopy(module.state_dict())
        self.good_epoch = -1

    # ------------------------------------------------------------------------------------------ helpers
    def draw_sources(self, pool: torch.Tensor) -> torch.Tensor:
        """One random source cell (B, G) from the pool of each row."""
        u = torch.rand(pool.shape[0], generator=self.generator).to(pool.device)
        offset = (u * self.pool_size[pool]).long().clamp_max(self.pool_size[pool] - 1)
        return self.sources[self.pool_order[self.pool_start[pool] + offset]]

    def _gradient_term(self, module: CellGenModule, real: torch.Tensor, fake: torch.Tensor,
                       pert: torch.Tensor, step: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        eps = torch.rand(real.shape[0], 1, generator=self.generator).to(real.device)
        mixed = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
        scores = module.score(mixed, pert, step, keep)
        (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
        norm = grad.norm(2, dim=1)
        if self.penalty == "div":
            return norm.pow(6).mean()
        return (norm - 1.0).pow(2).mean()

    def checkpoint(self, module: CellGenModule, epoch: int) -> None:
        """Remember ``module``'s state as the last good one (called at the end of every finite epoch)."""
        self.good_state = copy.deepcopy(module.state_dict())
        self.good_epoch = epoch

    def _diverged(self, module: CellGenModule, what: str) -> GANDivergedError:
        module.load_state_dict(self.good_state)
        where = f"the end of epoch {self.good_epoch + 1}" if self.good_epoch >= 0 else "initialisation"
        return GANDivergedError(
            f"cellgen training diverged: the {what} became NaN/inf at batch {self.count}. The model was restored to its "
            f"last good state ({where}) and can be saved; refit with a lower learning_rate or a higher gp weight."
        )

    # -------------------------------------------------------------------------------------------- step
    def __call__(self, module: CellGenModule, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> LossOutput:
        real, pert, step, pool = batch["x"], batch["pert"], batch["step"], batch["pool"]
        w = self.weights
        x = self.draw_sources(pool)
        keep = None
        if self.unseen_rate > 0:
            keep = (torch.rand(pert.shape, generator=self.generator) >= self.unseen_rate).to(pert)
        # ---- critic
        with torch.no_grad():
            fake = module.generate(x, pert, step, keep)
        d_real = module.score(real, pert, step, keep)
        d_fake = module.score(fake, pert, step, keep)
        wasserstein = d_real.mean() - d_fake.mean()
        grad_term = self._gradient_term(module, real, fake, pert, step, keep)
        critic_loss = -wasserstein + w.gp * grad_term + w.drift * d_real.pow(2).mean()
        if not torch.isfinite(critic_loss):
            raise self._diverged(module, "critic loss")
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        self.count += 1
        # ---- generator, every n_critic batches (the first batch included)
        if (self.count - 1) % self.n_critic == 0:
            for p in module.critic_parameters():
                p.requires_grad_(False)
            fake = module.generate(x, pert, step, keep)
            adversarial = -module.score(fake, pert, step, keep).mean()
            terms = {"adversarial": adversarial}
            none_pert, none_step = torch.zeros_like(pert), torch.full_like(step, -1)
            if w.identity > 0:
                terms["identity"] = (module.generate(x, none_pert, none_step) - x).abs().mean()
            if w.cycle > 0:
                terms["cycle"] = (module.generate(fake, none_pert, none_step) - x).abs().mean()
            if w.distribution > 0:
                _, group = torch.unique(torch.cat([pert, step[:, None].to(pert)], 1), dim=0, return_inverse=True)
                ed = energy_distance_torch(fake, real, group, group, unbiased=True)
                ok = ~torch.isnan(ed)  # conditions with >= 2 cells in this batch; none in a tiny last batch
                terms["energy_distance"] = ed[ok].mean() if bool(ok.any()) else fake.sum() * 0.0
            gen_loss = (adversarial + w.identity * terms.get("identity", 0.0) + w.cycle * terms.get("cycle", 0.0)
                        + w.distribution * terms.get("energy_distance", 0.0))
            for p in module.critic_parameters():
                p.requires_grad_(True)
            if not torch.isfinite(gen_loss):
                raise self._diverged(module, "generator loss")
            optimizer.zero_grad(set_to_none=True)
            gen_loss.backward()
            optimizer.step()
            self.last_generator = {"generator_loss": gen_loss.detach(), **{k: v.detach() for k, v in terms.items()}}
        components = {
            "critic_loss": critic_loss.detach(),
            "gradient_penalty": grad_term.detach(),
            "wasserstein": wasserstein.detach(),
            **self.last_generator,
        }
        return LossOutput(loss=self.last_generator["generator_loss"], components=components, n_obs=real.shape[0])
