"""The GEM-1 torch module: a VAE with technical / biological / perturbation latent blocks and metadata priors.

GEM-1 (Synthesize Bio, "GEM-1: a generative model of gene expression conditioned on metadata",
bioRxiv 2025.09.08.674753). An encoder maps normalised expression to the posterior of three latent
blocks z = [z_tech, z_bio, z_pert]; each block has a conditional prior p(z_g | m_g) = Normal(mu(m_g),
sigma(m_g)) computed from that group's metadata m_g; a decoder maps z to a likelihood over genes;
linear classifiers on z_bio and z_pert predict the biological and perturbation labels. The loss is

    L = -log p(x | z) + beta * sum_g KL(q(z_g | x) || p(z_g | m_g)) + classifier_weight * sum CE.

Pure torch: tensors in, tensors out, no AnnData (scvi-tools' module / model split).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Multinomial, NegativeBinomial, Normal, kl_divergence

from cellgym.predictors.base import LossOutput, PredictorModule, seeded
from cellgym.predictors.base._data import TARGET_SUM

__all__ = ["Gem1Module", "Likelihood"]

Likelihood = Literal["gaussian", "multinomial", "nb"]
GROUP_NAMES = ("technical", "biological", "perturbation")
MULTINOMIAL_CHUNK = 10_000_000  # draws held in memory at once when sampling multinomial counts


def mlp(n_in: int, n_hidden: int, n_layers: int, dropout: float) -> nn.Sequential:
    """``n_layers`` x (Linear -> LayerNorm -> ReLU -> Dropout); LayerNorm behaves the same in train and eval."""
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(n_in if i == 0 else n_hidden, n_hidden), nn.LayerNorm(n_hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ConditionalPrior(nn.Module):
    """p(z | m) = Normal(mu(m), sigma(m)) with mu, log sigma linear in the metadata features m.

    A linear map of one-hot / multi-hot metadata is a sum of learned category embeddings, so the prior
    of a combination ``A+B`` is composed from the embeddings of ``A`` and ``B``. With no metadata the
    prior is a learned constant Normal.
    """

    def __init__(self, n_in: int, n_latent: int) -> None:
        super().__init__()
        self.n_in = n_in
        self.linear = nn.Linear(n_in, 2 * n_latent) if n_in > 0 else None
        self.bias = nn.Parameter(torch.zeros(2 * n_latent))

    def forward(self, m: torch.Tensor) -> Normal:
        """Prior of a batch of metadata rows ``m`` (B, n_in)."""
        h = self.bias.expand(m.shape[0], -1)
        if self.linear is not None:
            h = h + self.linear(m)
        mu, raw = h.chunk(2, dim=-1)
        return Normal(mu, F.softplus(raw + 0.5413) + 1e-4, validate_args=False)  # softplus(0.5413) = 1


class Gem1Module(PredictorModule):
    """GEM-1 VAE: encoder, three conditional priors, decoder, latent classifiers.

    Parameters
    ----------
    n_genes
        G.
    n_meta
        Widths of the metadata feature vectors (technical, biological, perturbation). The perturbation
        vector is ``[multi-hot over P singles | unseen count | extra categorical one-hots | numeric]``.
    n_perturbations
        P, the number of known single perturbations (the first P columns of the perturbation vector).
    bio_classes
        Number of classes of each biological categorical column (one linear classifier each).
    n_latent
        Latent sizes of the technical, biological and perturbation blocks.
    n_hidden, n_layers, dropout
        Encoder / decoder MLPs.
    likelihood
        ``"gaussian"`` (log1p expression, learned per-gene variance), ``"multinomial"`` (counts given the
        library size) or ``"nb"`` (negative binomial, mean softmax(logits) x library, per-gene dispersion).
    beta
        Weight of the KL terms.
    classifier_weight
        Weight of the classifier cross-entropies.
    unseen_rate
        Training-time probability of replacing a single perturbation's identity by the shared "unseen"
        feature, which thereby learns a generic perturbation effect used for singles absent in training.
    prior_decode_rate
        Fraction of training cells decoded from their metadata alone, every latent block at its
        conditional prior mean instead of a posterior draw (a cellgym addition, not in the GEM-1
        preprint). Without it the technical / biological posteriors, which see the perturbed cell,
        absorb the perturbation's effect and the perturbation prior learns a small fraction of it
        (measured: ~1% of the shift on a SERGIO screen); with it the priors and decoder are trained
        on the metadata-only path that ``predict_expression`` / ``predict_perturbation`` use. When the
        batch holds ``x_match`` (a matched control cell of each training cell: same technical and
        biological metadata), those cells take the technical / biological latents of their
        matched control's posterior and the perturbation latent's prior mean instead, the path :meth:`predict_batch` and ``ref_predict_perturbation``
        use at inference (the fix proposed in the issue-4 notes): the perturbation latent must then
        explain the whole difference to the controls, weak effects included.
    unseen_effect
        What :meth:`predict_batch` does for singles unseen in training. Each unseen single ``u`` has
        weights ``alpha_u`` over the P seen singles (summing to 1): equal weights, or, for the rows of
        ``extra_alpha`` (singles mapped from their target gene's embedding by the predictor), ridge
        weights. ``"mean_of_seen"`` (default) adds the ``alpha_u``-weighted mean of the seen singles'
        predicted changes of that cell; ``"latent"`` gives ``u`` its own perturbation latent, the prior
        of the fractional multi-hot ``alpha_u`` (the prior is linear in it: the ``alpha``-weighted mean
        of the seen singles' latents); ``"generic"`` uses the learned "unseen" feature of the prior
        (GEM-1's generic effect, trained by ``unseen_rate``); ``"measured"``: the unmapped ones (the count
        column, and the columns with ``extra_measured`` 1) add the ``measured_effect`` row of the cell's
        context (the equal-weight mean of the seen singles' measured changes, filled by the predictor), the
        others as ``"mean_of_seen"``; a column with ``extra_target`` >= 0 also adds ``target_effect`` at that
        gene (its target's own change).
    combination
        How :meth:`predict_batch` predicts several singles at once (``A+B``): ``"sum"`` (default) adds
        the predicted changes of each single decoded alone (additive composition, as
        ``baseline.additive`` composes measured singles); ``"latent"`` decodes the prior of the summed
        multi-hot (GEM-1's own composition: the perturbation latents add, the decoder is nonlinear).
    n_mapped
        Unseen singles with their own column (rows of the ``extra_alpha``, ``extra_measured`` and
        ``extra_target`` buffers; the predictor fills them).
    n_contexts
        Rows of the ``measured_effect`` buffer (C, G); 0: no such buffer (checkpoints from before it).
    delta_weight
        Weight of a matched-pair term (a cellgym addition, not in the GEM-1 preprint), used when the batch
        holds ``x_match``: each training cell's matched control plus the predicted change (:meth:`change`
        with the control's latents and the cell's perturbation) should equal the cell; per perturbation
        of the batch the mean residual is squared (summed over genes in log1p space, weighted by the
        perturbation's cells). It trains the inference path of :meth:`predict_batch` in the space the
        metrics read, so weak effects count: it is minimised by the pseudobulk delta (mean perturbed minus
        mean matched control). Squaring per cell instead would teach every control cell to jump to the
        perturbed mean (measured: energy distance 0.97 vs 0.25 for ``baseline.mean`` on Papalexi).
        0 turns it off.
    """

    def __init__(
        self,
        n_genes: int,
        n_meta: tuple[int, int, int],
        n_perturbations: int,
        bio_classes: list[int],
        *,
        n_latent: tuple[int, int, int] = (8, 16, 16),
        n_hidden: int = 128,
        n_layers: int = 2,
        dropout: float = 0.1,
        likelihood: Likelihood = "nb",
        beta: float = 1.0,
        classifier_weight: float = 1.0,
        unseen_rate: float = 0.1,
        prior_decode_rate: float = 0.5,
        unseen_effect: Literal["mean_of_seen", "measured", "latent", "generic"] = "mean_of_seen",
        combination: Literal["sum", "latent"] = "sum",
        n_mapped: int = 0,
        delta_weight: float = 0.0,
        n_contexts: int = 0,
    ) -> None:
        super().__init__()
        self.delta_weight = delta_weight
        self.prior_decode_rate = prior_decode_rate
        self.unseen_effect = unseen_effect
        self.combination = combination
        self.n_genes = n_genes
        self.n_latent = tuple(int(d) for d in n_latent)
        self.n_perturbations = n_perturbations
        self.bio_classes = list(bio_classes)
        self.likelihood = likelihood
        self.beta = beta
        self.classifier_weight = classifier_weight
        self.unseen_rate = unseen_rate
        self.encoder = nn.Sequential(mlp(n_genes, n_hidden, n_layers, dropout), nn.Linear(n_hidden, 2 * sum(self.n_latent)))
        self.priors = nn.ModuleList([ConditionalPrior(w, d) for w, d in zip(n_meta, self.n_latent, strict=True)])
        self.decoder = nn.Sequential(mlp(sum(self.n_latent), n_hidden, n_layers, 0.0), nn.Linear(n_hidden, n_genes))
        self.log_sigma = nn.Parameter(torch.zeros(n_genes))  # gaussian: per-gene log standard deviation
        self.log_theta = nn.Parameter(torch.full((n_genes,), 2.0))  # nb: per-gene log inverse dispersion
        self.bio_classifier = nn.Linear(self.n_latent[1], sum(self.bio_classes)) if self.bio_classes else None
        self.pert_classifier = nn.Linear(self.n_latent[2], n_perturbations) if n_perturbations else None
        # defaults of the non-multi-hot part of the perturbation features, row 0 control / row 1 perturbed
        n_rest = n_meta[2] - n_perturbations - 1
        self.register_buffer("pert_rest_default", torch.zeros(2, max(n_rest, 0)))
        self.register_buffer("library_size", torch.tensor(TARGET_SUM))  # typical library (sampling default)
        # weights over the P seen singles of each unseen single mapped from its gene embedding (rows sum to 1)
        # (saved in the predictor's config.yaml, not weights.pt: checkpoints from before issue 14 still load)
        self.register_buffer("extra_alpha", torch.zeros(n_mapped, n_perturbations), persistent=False)
        # unseen_effect="measured": 1 for columns predicted from the measured mean; each column's target gene or -1;
        # the change a knockout's own target shows beyond the mean change (also saved in config.yaml)
        self.register_buffer("extra_measured", torch.zeros(n_mapped), persistent=False)
        self.register_buffer("extra_target", torch.full((n_mapped,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("target_effect", torch.zeros(()), persistent=False)
        # per context, the equal-weight mean of the seen singles' measured changes (unseen_effect="measured")
        if n_contexts > 0:
            self.register_buffer("measured_effect", torch.zeros(n_contexts, n_genes))
        else:
            self.measured_effect = None

    # --------------------------------------------------------------------------------------- inference
    def posterior(self, x: torch.Tensor) -> list[Normal]:
        """q(z_g | x) for the three blocks, from log1p-normalised expression ``x`` (B, G)."""
        h = self.encoder(x)
        mean, logvar = h.chunk(2, dim=-1)
        scale = torch.exp(0.5 * logvar.clamp(-12.0, 8.0))
        return [
            Normal(m, s, validate_args=False)
            for m, s in zip(mean.split(self.n_latent, -1), scale.split(self.n_latent, -1), strict=True)
        ]

    def prior(self, group: int, m: torch.Tensor) -> Normal:
        """p(z_group | m) for metadata features ``m`` (B, n_meta[group])."""
        return self.priors[group](m)

    def pert_features(self, pert: torch.Tensor) -> torch.Tensor:
        """Perturbation-group features (B, n_meta[2]) from a multi-hot (B, P) or (B, P + 1 with unseen count).

        The extra categorical / numeric features take their training defaults (control vs perturbed).
        """
        b = pert.shape[0]
        if pert.shape[1] == self.n_perturbations:
            pert = torch.cat([pert, pert.new_zeros(b, 1)], dim=1)
        if pert.shape[1] != self.n_perturbations + 1:
            raise ValueError(f"pert has {pert.shape[1]} columns, expected {self.n_perturbations} (the known singles).")
        perturbed = (pert.sum(1) > 0).long()
        return torch.cat([pert, self.pert_rest_default[perturbed]], dim=1)

    def split_pert(self, pert: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(known (B, P), n_unseen (B,), unseen_weights (B, P))`` of a perturbation row.

        ``pert`` is (B, P), (B, P + 1) (the last column counts unseen singles without a mapping) or
        (B, P + 1 + n_mapped) (then one column per mapped unseen single). ``unseen_weights`` sums each
        row's unseen singles' ``alpha`` (equal weights for the unmapped ones); its rows sum to ``n_unseen``.
        """
        p = self.n_perturbations
        known = pert[:, :p]
        count = pert[:, p] if pert.shape[1] > p else pert.new_zeros(pert.shape[0])
        weights = count[:, None].expand(-1, p) / max(p, 1)
        n_unseen = count
        if pert.shape[1] > p + 1:
            mapped = pert[:, p + 1 :]
            if mapped.shape[1] != self.extra_alpha.shape[0]:
                raise ValueError(f"pert has {pert.shape[1]} columns, expected {p + 1 + self.extra_alpha.shape[0]}.")
            weights = weights + mapped @ self.extra_alpha
            n_unseen = n_unseen + mapped.sum(1)
        return known, n_unseen, weights

    def prior_features(self, pert: torch.Tensor, *, unseen: Literal["latent", "generic"] = "latent") -> torch.Tensor:
        """Features of the perturbation prior for any row :meth:`split_pert` accepts, unseen singles as
        ``unseen`` says (``"latent"``: their ``alpha`` added to the multi-hot; ``"generic"``: the count)."""
        known, n_unseen, weights = self.split_pert(pert)
        if unseen == "generic":
            return self.pert_features(torch.cat([known, n_unseen[:, None]], 1))
        return self.pert_features(known + weights)

    # -------------------------------------------------------------------------------------- generative
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output (B, G): the log1p mean (gaussian) or the gene logits (multinomial / nb)."""
        return self.decoder(z)

    def distribution(self, h: torch.Tensor, library: torch.Tensor) -> Distribution:
        """Likelihood of the data given decoder output ``h`` (B, G) and library sizes (B,)."""
        if self.likelihood == "gaussian":
            return Normal(h, self.log_sigma.exp(), validate_args=False)
        if self.likelihood == "multinomial":
            return Multinomial(logits=h, validate_args=False)  # log_prob ignores total_count
        theta = self.log_theta.exp()
        logits = F.log_softmax(h, dim=-1) + library.clamp_min(1.0).log().unsqueeze(-1) - theta.log()
        return NegativeBinomial(total_count=theta, logits=logits, validate_args=False)

    def log1p_expression(self, h: torch.Tensor) -> torch.Tensor:
        """Expected expression in the contract's log1p(normalised to 1e4) space, (B, G)."""
        if self.likelihood == "gaussian":
            return h
        return torch.log1p(F.softmax(h, dim=-1) * TARGET_SUM)

    def expected_counts(self, h: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Expected counts (B, G) for libraries (B,)."""
        if self.likelihood == "gaussian":
            frac = torch.expm1(h).clamp_min(0.0)
            frac = frac / frac.sum(-1, keepdim=True).clamp_min(1e-12)
        else:
            frac = F.softmax(h, dim=-1)
        return frac * library.unsqueeze(-1)

    def sample_counts(
        self, h: torch.Tensor, library: torch.Tensor, how: Literal["nb", "multinomial"], generator: torch.Generator
    ) -> torch.Tensor:
        """Counts (B, G) drawn for libraries (B,): NB (Gamma-Poisson) or multinomial over genes."""
        if how == "nb" and self.likelihood == "nb":
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
            with seeded(seed):
                return self.distribution(h, library).sample()
        if self.likelihood == "gaussian":
            z = torch.randn(h.shape, generator=generator, device=h.device)
            h = (h + self.log_sigma.exp() * z).clamp_min(0.0)
            probs = torch.expm1(h)
            probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
        else:
            probs = F.softmax(h, dim=-1)
        return multinomial_counts(probs, library, generator)

    # ----------------------------------------------------------------------------------------- training
    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Negative ELBO plus classifier cross-entropies of one batch.

        ``batch`` keys: ``x`` (B, G) log1p encoder input, ``target`` (B, G) what the likelihood scores
        (counts, or ``x`` for gaussian), ``library`` (B,), ``m_technical`` / ``m_biological`` /
        ``m_perturbation`` metadata features, ``y_biological`` (B, n_bio_columns) int64 class indices.
        """
        x = batch["x"]
        m = [batch["m_technical"], batch["m_biological"], batch["m_perturbation"]]
        p_known = m[2][:, : self.n_perturbations]
        if self.training and self.unseen_rate > 0 and self.n_perturbations:
            # GEM-1 perturbation "word dropout": some singles are shown as unseen, teaching the unseen slot
            hide = (torch.rand_like(p_known) < self.unseen_rate) * p_known
            m[2] = torch.cat([p_known - hide, m[2][:, self.n_perturbations : self.n_perturbations + 1] + hide.sum(1, keepdim=True),
                              m[2][:, self.n_perturbations + 1 :]], dim=1)
        q = self.posterior(x)
        q_match = None
        priors = [self.prior(g, m[g]) for g in range(3)]
        z = [qg.rsample() for qg in q]
        if self.training and self.prior_decode_rate > 0:
            # decode some cells from their metadata alone (every block at its prior mean): otherwise the
            # posterior of the technical / biological blocks, which sees the perturbed cell, explains the
            # perturbation's effect and the perturbation prior learns almost none of it
            use_prior = (torch.rand(x.shape[0], 1, device=x.device) < self.prior_decode_rate).to(x.dtype)
            ref = [pg.mean for pg in priors]
            if "x_match" in batch:  # technical / biological latents of a matched control, as at inference
                q_match = self.posterior(batch["x_match"])
                ref = [q_match[0].mean, q_match[1].mean, ref[2]]
            z = [use_prior * rg + (1 - use_prior) * zg for zg, rg in zip(z, ref, strict=True)]
        h = self.decode(torch.cat(z, dim=-1))
        delta_loss = x.new_zeros(())
        if self.delta_weight > 0 and "x_match" in batch:
            # the inference path in the metric's space: matched control + predicted change ~ the perturbed cell
            q_m = self.posterior(batch["x_match"]) if q_match is None else q_match
            resid = batch["x_match"] + self.change(q_m[0].mean, q_m[1].mean, p_known) - x
            # per perturbation of the batch, the squared error of the mean residual (weighted by its cells):
            # per-cell least squares would teach each control to jump to the perturbed mean (collapse)
            _, group = torch.unique(p_known, dim=0, return_inverse=True)
            sums = resid.new_zeros(int(group.max()) + 1, resid.shape[1]).index_add(0, group, resid)
            n = torch.bincount(group).to(resid.dtype)
            delta_loss = (sums.pow(2).sum(-1) / n).sum() / x.shape[0]
        recon = -self.distribution(h, batch["library"]).log_prob(batch["target"])
        if recon.dim() == 2:
            recon = recon.sum(-1)
        kls = [kl_divergence(qg, pg).sum(-1) for qg, pg in zip(q, priors, strict=True)]
        components: dict[str, torch.Tensor] = {"reconstruction": recon.mean().detach()}
        for name, kl in zip(GROUP_NAMES, kls, strict=True):
            components[f"kl_{name}"] = kl.mean().detach()
        elbo = (recon + self.beta * sum(kls)).mean() + self.delta_weight * delta_loss
        components["delta_mse"] = delta_loss.detach()
        ce = x.new_zeros(())
        if self.bio_classifier is not None:
            logits = self.bio_classifier(q[1].mean).split(self.bio_classes, dim=-1)
            y = batch["y_biological"]
            for j, lg in enumerate(logits):
                ce = ce + F.cross_entropy(lg, y[:, j])
            components["accuracy_biological"] = torch.stack(
                [(lg.argmax(-1) == y[:, j]).float().mean() for j, lg in enumerate(logits)]
            ).mean().detach()
        if self.pert_classifier is not None:
            lg = self.pert_classifier(q[2].mean)
            ce = ce + F.binary_cross_entropy_with_logits(lg, p_known, reduction="none").sum(-1).mean()
            components["accuracy_perturbation"] = ((lg > 0).float() == p_known).all(-1).float().mean().detach()
        components["classifier_ce"] = ce.detach()
        return LossOutput(elbo + self.classifier_weight * ce, components, n_obs=x.shape[0])

    # --------------------------------------------------------------------------------------- prediction
    def classify_biological(self, z_bio: torch.Tensor) -> list[torch.Tensor]:
        """Class probabilities of each biological column, list of (B, n_classes)."""
        if self.bio_classifier is None:
            return []
        return [F.softmax(lg, -1) for lg in self.bio_classifier(z_bio).split(self.bio_classes, dim=-1)]

    def response(
        self, q_tech: torch.Tensor, q_bio: torch.Tensor, z_pert: torch.Tensor, z_ref: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder outputs (perturbed, reference) for shared technical / biological latents."""
        h = self.decode(torch.cat([torch.cat([q_tech, q_bio, z_pert], -1), torch.cat([q_tech, q_bio, z_ref], -1)], 0))
        return h.chunk(2, dim=0)

    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """GEM-1 ``ref_predict_perturbation`` in mean mode, in log1p space, (B, G).

        The technical and biological latents are the control cell's posterior means; the perturbation
        latent is the prior mean of ``pert``. The output is the control cell shifted by the predicted
        log-fold change ``de_pred`` = f(z_pert) - f(z_control) (clamped at 0), which keeps the cell's
        own variation and avoids the gap between the log of a mean and the mean of logs on sparse
        counts. ``ctx`` is not needed: the biological latent comes from the cell itself.

        Combinations follow ``combination``, unseen singles ``unseen_effect`` (class docstring); a
        control row (no single) is returned unchanged.
        """
        q = self.posterior(x)
        return (x + self.change(q[0].mean, q[1].mean, pert, ctx)).clamp_min(0.0)

    def change(self, tech: torch.Tensor, bio: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(B, G) predicted log1p change ``f(z_pert) - f(z_control)`` of cells with latents ``tech``, ``bio``
        under perturbation rows ``pert`` (any width :meth:`split_pert` accepts); 0 for control rows.

        Combinations follow ``combination``, unseen singles ``unseen_effect`` (class docstring); ``ctx``
        (B,) picks the row of ``measured_effect`` (None: context 0).
        """
        known, n_unseen, weights = self.split_pert(pert)
        p = self.n_perturbations
        effect = self.unseen_effect
        measured = None
        if effect == "measured":
            effect = "mean_of_seen"  # for the mapped columns; rows without unseen singles need nothing more
        if self.unseen_effect == "measured" and pert.shape[1] > p:
            if self.measured_effect is None:
                raise ValueError("unseen_effect='measured' needs the measured_effect buffer (n_contexts > 0).")
            count = pert[:, p]
            weights = weights - count[:, None] / max(p, 1)
            n_unseen = n_unseen - count
            target = torch.zeros(pert.shape[0], self.n_genes, dtype=pert.dtype, device=pert.device)
            if pert.shape[1] > p + 1:  # own columns: measured or mapped (ridge weights), and their targets
                cols = pert[:, p + 1 :]
                flag = cols * self.extra_measured
                count = count + flag.sum(1)
                weights = weights - flag @ self.extra_alpha
                n_unseen = n_unseen - flag.sum(1)
                has = torch.nonzero(self.extra_target >= 0).squeeze(1)
                if has.numel():
                    target = target.index_add(1, self.extra_target[has], cols[:, has] * self.target_effect)
            rows_ctx = torch.zeros(pert.shape[0], dtype=torch.long, device=pert.device) if ctx is None else ctx
            measured = count[:, None] * self.measured_effect[rows_ctx] + target
        # components: (row, prior features) pairs whose predicted changes add up to each row's change
        if effect == "generic":
            full = torch.cat([known, n_unseen[:, None]], 1)
        else:
            full = torch.cat([known + weights if effect == "latent" else known, known.new_zeros(known.shape[0], 1)], 1)
        if self.combination == "latent":
            rows = torch.nonzero(full.abs().sum(1) > 0).squeeze(1)
            feats = full[rows]
        else:  # one component per seen single; the unseen part (latent / generic) as one more component
            r_known, c_known = torch.nonzero(known, as_tuple=True)
            one_hot = known.new_zeros(r_known.shape[0], p + 1)
            one_hot[torch.arange(r_known.shape[0]), c_known] = known[r_known, c_known]
            rest = full.clone()
            rest[:, :p] -= known
            r_rest = torch.nonzero(rest.abs().sum(1) > 0).squeeze(1)
            rows, feats = torch.cat([r_known, r_rest]), torch.cat([one_hot, rest[r_rest]])
        z_ref = self.prior(2, self.pert_features(known.new_zeros(1, p))).mean
        f_ref = self.log1p_expression(self.decode(torch.cat([tech, bio, z_ref.expand(tech.shape[0], -1)], -1)))
        delta = torch.zeros_like(f_ref)
        if rows.numel():
            z = self.prior(2, self.pert_features(feats)).mean
            f = self.log1p_expression(self.decode(torch.cat([tech[rows], bio[rows], z], -1)))
            delta = delta.index_add(0, rows, f - f_ref[rows])
        if effect == "mean_of_seen":
            r = torch.nonzero(n_unseen > 0).squeeze(1)
            if r.numel():
                delta = delta.index_add(0, r, self.weighted_seen_change(tech[r], bio[r], f_ref[r], weights[r]))
        return delta if measured is None else delta + measured

    def weighted_seen_change(self, tech: torch.Tensor, bio: torch.Tensor, f_ref: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(B, G) ``sum_s weights[b, s] * (f(z_s) - f(z_ref))`` over the P seen singles, per cell.

        With equal weights ``n/P`` this is ``n`` times the equal-weight mean of the seen singles' predicted
        changes. One batched decode of B x P rows (in chunks of about 4096 rows). Zero when no single was seen.
        """
        p = self.n_perturbations
        b = tech.shape[0]
        if p == 0 or b == 0:
            return torch.zeros_like(f_ref)
        z_s = self.prior(2, self.pert_features(torch.eye(p, device=tech.device, dtype=tech.dtype))).mean  # (P, d)
        out = torch.zeros_like(f_ref)
        cells_per_chunk = max(1, 4096 // p)
        for s in range(0, b, cells_per_chunk):
            sl = slice(s, s + cells_per_chunk)
            n = tech[sl].shape[0]
            z = torch.cat([tech[sl].repeat_interleave(p, 0), bio[sl].repeat_interleave(p, 0), z_s.repeat(n, 1)], -1)
            f = self.log1p_expression(self.decode(z)).view(n, p, -1)
            w = weights[sl]
            out[sl] = torch.einsum("np,npg->ng", w, f) - w.sum(1, keepdim=True) * f_ref[sl]
        return out

    def seen_changes(self, tech: torch.Tensor, bio: torch.Tensor) -> torch.Tensor:
        """(P, G) predicted change of each seen single for one set of latents ``tech`` (1, d_t), ``bio`` (1, d_b)."""
        p = self.n_perturbations
        z_s = self.prior(2, self.pert_features(torch.eye(p, dtype=tech.dtype, device=tech.device))).mean
        z_ref = self.prior(2, self.pert_features(tech.new_zeros(1, p))).mean
        z = torch.cat([tech.expand(p + 1, -1), bio.expand(p + 1, -1), torch.cat([z_s, z_ref])], -1)
        f = self.log1p_expression(self.decode(z))
        return f[:p] - f[p:]


def multinomial_counts(probs: torch.Tensor, totals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Multinomial draws (B, G) with per-row totals (B,) (rounded), exactly, in memory-bounded chunks."""
    totals = totals.round().long().clamp_min(0)
    out = torch.zeros_like(probs)
    n_max = int(totals.max()) if totals.numel() else 0
    if n_max == 0:
        return out
    rows_per_chunk = max(1, MULTINOMIAL_CHUNK // n_max)
    for start in range(0, probs.shape[0], rows_per_chunk):
        sl = slice(start, start + rows_per_chunk)
        n = int(totals[sl].max())
        if n == 0:
            continue
        draws = torch.multinomial(probs[sl], n, replacement=True, generator=generator)
        keep = (torch.arange(n, device=probs.device).unsqueeze(0) < totals[sl].unsqueeze(1)).to(probs.dtype)
        out[sl].scatter_add_(1, draws, keep)
    return out
