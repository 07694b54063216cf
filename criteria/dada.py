"""The DADA criterion (docs/reference.md §1.3–§1.9) and the plain proxy baseline.

``DADACriterion`` wraps any base proxy loss (``criteria.proxy_losses``) and adds the adversarial domain
adaptation between the batch embeddings, the proxies and sample–proxy mixes:

    L_D = (1 − ρ)·L_uni + ρ·(L_cls − κΔ)                          (discriminator step)
    L_G = r·L_proxy + γ·[ρ·(L_cls + κΔ) − (1 − ρ)·L_uni]           (generator step)

Behaviour follows the reference implementation (``Noahsark/DADA``) exactly, including the order in which
mixing coefficients are drawn (see ``criteria.mixing``), per-domain BatchNorm statistics and
discriminators that stay in training mode. Not ported: ``mix_extension``, which crashes in the reference
(target/logit size mismatch in the unified discriminator, docs/reference.md §1.5). All criterion math runs in float32
with autocast disabled, whatever the caller's precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from criteria.base import ParamGroups, ProxyLoss
from criteria.discriminators import DISCREPANCIES, ClassDiscrepancyPredictor, DomainDiscriminator
from criteria.mixing import (
    MixSource,
    SeededBetaSource,
    init_mix_weight,
    mix_positive_pairs,
    sample_proxy_mix,
)
from criteria.precision import float32_forward
from criteria.settings import DADASettings, check_dada

# Domain targets of the unified discriminator.
SAMPLE_DOMAIN, MIXED_DOMAIN, PROXY_DOMAIN = 0, 1, 2


def _init_proxies(n_classes: int, embed_dim: int, std: float) -> nn.Parameter:
    """Proxies W ~ N(0, 1)·std (the reference: randn / 8)."""
    return nn.Parameter(torch.randn(n_classes, embed_dim) * std)


class DADACriterion(nn.Module):
    """Proxy loss + DADA adversarial domain adaptation; owns proxies, discriminators and mix weight.

    Use ``discriminator_loss`` for the discriminator step and ``generator_loss`` (= ``forward``) for the
    generator step; both return (loss, logs) where logs are detached scalars named as in the fixtures.
    ``mix_source`` supplies the Beta draws; replace the attribute to replay recorded draws. The base loss
    must use one proxy per class (``proxies_per_class == 1``): the proxies form DADA's third domain and the
    class predictor's targets. ``settings`` holds DADA's keys (`criteria.settings.DADASettings`, whose
    defaults are the reference's); they are checked once, by `criteria.settings.check_dada`.
    """

    adversarial = True

    def __init__(
        self,
        base_loss: ProxyLoss,
        n_classes: int,
        embed_dim: int,
        settings: DADASettings | None = None,
        *,
        samples_per_class: int = 2,
        proxy_init_std: float = 0.125,
        mix_source: MixSource | None = None,
    ) -> None:
        super().__init__()
        settings = settings if settings is not None else DADASettings()
        check_dada(settings, samples_per_class)
        if base_loss.proxies_per_class != 1:
            raise ValueError(f"DADA needs one proxy per class, the base loss has {base_loss.proxies_per_class}")
        self.settings = settings
        self.proxy_loss_weight = float(settings.proxy_loss_weight)
        self.adv_weight = float(settings.adv_weight)
        self.class_ratio = float(settings.class_ratio)
        self.discrepancy_weight = float(settings.discrepancy_weight)
        self.discrepancy = settings.discrepancy
        self.normalize_features = bool(settings.normalize_features)
        self.mix_mode = mix_mode = settings.mix_mode
        self.shift_scale = float(settings.shift_scale)
        self.mix_alpha = float(settings.mix_alpha)
        self.mix_beta = float(settings.mix_beta)
        self.pos_class_mix = bool(settings.pos_class_mix)

        self.base_loss = base_loss
        # Creation order (proxies, domain, classifier, mix weight) follows the reference, so a given
        # torch seed initialises the same numbers.
        self.proxies = _init_proxies(n_classes, embed_dim, proxy_init_std)
        self.domain = DomainDiscriminator(
            embed_dim, settings.domain_hidden, out_bn=settings.domain_out_bn, activation=settings.activation
        )
        self.classifier = ClassDiscrepancyPredictor(
            embed_dim,
            settings.class_hidden1,
            settings.class_hidden2,
            n_classes,
            dropout=settings.dropout,
            out_bn=settings.class_out_bn,
            activation=settings.activation,
        )
        self.register_parameter("mix_weight", init_mix_weight(mix_mode, embed_dim))
        self.mix_source: MixSource = mix_source if mix_source is not None else SeededBetaSource(0)

    # -- building blocks -------------------------------------------------------------------------------

    def _extended_batch(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(E, Y, Q): the batch, extended with class-mixed positives if enabled, and per-row proxies."""
        if self.pos_class_mix:
            return mix_positive_pairs(embeddings, labels, self.proxies, self.mix_source)
        return embeddings, labels, self.proxies[labels]

    def _mix(self, samples: Tensor, row_proxies: Tensor) -> Tensor:
        return sample_proxy_mix(
            samples,
            row_proxies,
            mode=self.mix_mode,
            source=self.mix_source,
            alpha=self.mix_alpha,
            beta=self.mix_beta,
            shift_scale=self.shift_scale,
            mix_weight=self.mix_weight,
        )

    def _prepare(self, *features: Tensor) -> tuple[Tensor, ...]:
        if self.normalize_features:
            return tuple(F.normalize(f, dim=-1) for f in features)
        return features

    def _domain_loss(self, samples: Tensor, row_proxies: Tensor) -> Tensor:
        """L_uni: 3-way CE, each domain forwarded separately (one mix draw)."""
        mixed = self._mix(samples, row_proxies)
        loss = samples.new_zeros(())
        for features, domain in zip(
            self._prepare(samples, mixed, row_proxies), (SAMPLE_DOMAIN, MIXED_DOMAIN, PROXY_DOMAIN)
        ):
            target = torch.full((features.shape[0],), domain, dtype=torch.long, device=features.device)
            loss = loss + F.cross_entropy(self.domain(features), target)
        return loss

    def _class_losses(self, samples: Tensor, labels: Tensor, row_proxies: Tensor) -> tuple[Tensor, Tensor]:
        """(L_cls, Δ) of the class predictor on samples vs a fresh mix (one mix draw)."""
        mixed = self._mix(samples, row_proxies)
        samples_in, mixed_in = self._prepare(samples, mixed)
        source_logits = self.classifier(samples_in)
        target_logits = self.classifier(mixed_in)
        class_loss = 2.0 * F.cross_entropy(source_logits, labels)
        return class_loss, DISCREPANCIES[self.discrepancy](source_logits, target_logits)

    # -- objectives ------------------------------------------------------------------------------------

    @float32_forward
    def discriminator_loss(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_D (docs/reference.md §1.8). The embeddings are detached here: no gradient reaches the network."""
        labels = labels.to(embeddings.device)
        samples, labels, row_proxies = self._extended_batch(embeddings.detach(), labels)
        uni_term = (1.0 - self.class_ratio) * self._domain_loss(samples, row_proxies)
        class_loss, delta = self._class_losses(samples, labels, row_proxies)
        cls_term = self.class_ratio * (class_loss - self.discrepancy_weight * delta)
        loss = uni_term + cls_term
        logs = {"uni_term_d": uni_term, "cls_term_d": cls_term, "discriminator_loss": loss}
        return loss, {k: v.detach() for k, v in logs.items()}

    @float32_forward
    def generator_loss(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_G (docs/reference.md §1.8): weighted proxy loss plus the adversarial part; gradients reach the
        network and the proxies."""
        labels = labels.to(embeddings.device)
        samples, labels, row_proxies = self._extended_batch(embeddings, labels)
        proxy_loss = self.base_loss(samples, labels, self.proxies)
        uni_term = (1.0 - self.class_ratio) * self._domain_loss(samples, row_proxies)
        class_loss, delta = self._class_losses(samples, labels, row_proxies)
        cls_term = self.class_ratio * (class_loss + self.discrepancy_weight * delta)
        loss = self.proxy_loss_weight * proxy_loss + self.adv_weight * (cls_term - uni_term)
        logs = {"proxy_loss": proxy_loss, "uni_term": uni_term, "cls_term": cls_term, "generator_loss": loss}
        return loss, {k: v.detach() for k, v in logs.items()}

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.generator_loss(embeddings, labels)

    def set_epoch(self, epoch: int) -> None:
        """Re-seed the mixing draws from (seed, epoch) when the source can (``SeededBetaSource``)."""
        if hasattr(self.mix_source, "set_epoch"):
            self.mix_source.set_epoch(epoch)
        self.base_loss.set_epoch(epoch)

    def param_groups(self, proxy_lr: float, disc_lr: float, disc_decay: float) -> ParamGroups:
        """Optimizer groups of docs/reference.md §1.9, covering every parameter of the criterion.

        "proxy" (stepped with the generator): the base loss's groups (``ProxyLoss.param_groups``: the
        proxies at ``proxy_lr``, then its own parameters, if any); f of ``individual`` mode at ``disc_lr``.
        "discriminator": both discriminators at ``disc_lr`` with ``disc_decay``; W_mix of ``linear`` mode at
        ``disc_lr`` without decay. No criterion parameter joins the backbone optimizer.
        """
        proxy = self.base_loss.param_groups(self.proxies, proxy_lr)
        discriminator = [
            {"params": list(self.domain.parameters()), "lr": disc_lr, "weight_decay": disc_decay},
            {"params": list(self.classifier.parameters()), "lr": disc_lr, "weight_decay": disc_decay},
        ]
        if self.mix_mode == "individual":
            proxy.append({"params": [self.mix_weight], "lr": disc_lr, "weight_decay": 0.0})
        elif self.mix_mode == "linear":
            discriminator.append({"params": [self.mix_weight], "lr": disc_lr, "weight_decay": 0.0})
        return {"proxy": proxy, "discriminator": discriminator}


class ProxyCriterion(nn.Module):
    """The plain baseline: a base proxy loss with its own proxies, no discriminators.

    Same interface as ``DADACriterion`` minus ``discriminator_loss`` (``adversarial`` is False). Holds
    ``n_classes × base_loss.proxies_per_class`` proxies (row c·K + k: proxy k of class c).
    """

    adversarial = False

    def __init__(self, base_loss: ProxyLoss, n_classes: int, embed_dim: int, proxy_init_std: float = 0.125) -> None:
        super().__init__()
        self.base_loss = base_loss
        self.proxies = _init_proxies(n_classes * base_loss.proxies_per_class, embed_dim, proxy_init_std)

    @float32_forward
    def generator_loss(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self.base_loss(embeddings, labels.to(embeddings.device), self.proxies)
        return loss, {"proxy_loss": loss.detach()}

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.generator_loss(embeddings, labels)

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the base loss (no draws of its own)."""
        self.base_loss.set_epoch(epoch)

    def param_groups(self, proxy_lr: float, disc_lr: float = 0.0, disc_decay: float = 0.0) -> ParamGroups:
        """The base loss's groups (the proxies at ``proxy_lr`` without decay, then its own parameters);
        no discriminator group (the other arguments are unused)."""
        return {"proxy": self.base_loss.param_groups(self.proxies, proxy_lr), "discriminator": []}
