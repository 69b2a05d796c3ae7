"""`topk_crosscoder` and `batchtopk_crosscoder`.

Both rank latents by s_j = f_j * sum_m ||d_j^m|| / c_j (c_j = shared_sparsity_coefficient for
shared latents, 1 otherwise) and decode with the unscaled f. TopK keeps k latents per token;
BatchTopK keeps the k*B largest scores of the batch while training and, at inference, every
latent whose score exceeds a threshold estimated during training (Minder et al. 2025).
Both train with AuxK on dead latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from typing_extensions import override

from sae_lens_crosscoder.architectures.base import (
    CrosscoderFields,
    CrosscoderMixin,
    CrosscoderTrainingMixin,
)
from sae_lens_crosscoder.errors import CrosscoderUserError


# ---- configs -------------------------------------------------------------------------------
@dataclass
class TopKCrosscoderConfig(SAEConfig, CrosscoderFields):
    k: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_crosscoder_fields()

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_crosscoder"


@dataclass
class BatchTopKCrosscoderConfig(SAEConfig, CrosscoderFields):
    """k is the training-time average; inference uses the stored threshold instead."""

    k: float = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_crosscoder_fields()

    @override
    @classmethod
    def architecture(cls) -> str:
        return "batchtopk_crosscoder"


@dataclass
class TopKCrosscoderTrainingConfig(TrainingSAEConfig, CrosscoderFields):
    """aux_loss_coefficient weighs AuxK (reconstruction of the residual by the top aux_k dead
    latents, normalised by the residual's variance); aux_k defaults to d_in // 2."""

    k: int = 100
    aux_loss_coefficient: float = 1 / 32
    aux_k: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_crosscoder_fields()
        if not 0 < self.k <= self.d_sae:
            raise CrosscoderUserError(f"k={self.k} must be between 1 and d_sae={self.d_sae}")

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_crosscoder"


@dataclass
class BatchTopKCrosscoderTrainingConfig(TopKCrosscoderTrainingConfig):
    """k_anneal_start: if set, k starts there and falls linearly to k over k_anneal_steps.
    threshold_lr: EMA rate of the inference threshold, updated once k has reached its final
    value, from the smallest selected score of each batch."""

    k: float = 100  # type: ignore[assignment]
    k_anneal_start: float | None = None
    k_anneal_steps: int = 0
    threshold_lr: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k_anneal_start is not None and self.k_anneal_start < self.k:
            raise CrosscoderUserError(
                f"k_anneal_start={self.k_anneal_start} must be >= k={self.k} (k anneals downwards)"
            )

    @override
    @classmethod
    def architecture(cls) -> str:
        return "batchtopk_crosscoder"


# ---- selection -----------------------------------------------------------------------------
def topk_per_token(scores: torch.Tensor, acts: torch.Tensor, k: int) -> torch.Tensor:
    idx = scores.topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(acts).scatter(-1, idx, acts.gather(-1, idx))


def batch_topk(scores: torch.Tensor, acts: torch.Tensor, k: float) -> torch.Tensor:
    """Keep exactly int(k * n_tokens) entries of the batch, the largest scores."""
    n_keep = min(int(k * scores.shape[:-1].numel()), scores.numel())
    flat = scores.flatten()
    idx = flat.topk(n_keep, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, idx, True)
    return acts * mask.view_as(acts)


class _TopKEncode:
    """encode() for TopK: per-token selection by score."""

    def _topk_encode(self: Any, x: torch.Tensor, W_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_pre = self.pre_activations(x)
        acts = hidden_pre.relu()
        scores = self.ranking_scores(acts.detach(), W_dec.detach())
        return self.hook_sae_acts_post(topk_per_token(scores, acts, int(self.cfg.k))), hidden_pre


class _ThresholdEncode:
    """encode() for BatchTopK at inference: keep latents whose score exceeds the threshold."""

    threshold: torch.Tensor

    def _threshold_encode(self: Any, x: torch.Tensor) -> torch.Tensor:
        acts = self.pre_activations(x).relu()
        scores = self.ranking_scores(acts)
        return self.hook_sae_acts_post(acts * (scores > self.threshold.to(scores.dtype)))


# ---- inference classes ---------------------------------------------------------------------
class TopKCrosscoder(_TopKEncode, CrosscoderMixin, SAE[TopKCrosscoderConfig]):
    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._topk_encode(x, self.W_dec)[0]


class BatchTopKCrosscoder(_ThresholdEncode, CrosscoderMixin, SAE[BatchTopKCrosscoderConfig]):
    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64, device=self.device))

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._threshold_encode(x)


# ---- training classes ----------------------------------------------------------------------
class TopKCrosscoderTrainingSAE(_TopKEncode, CrosscoderTrainingMixin, TrainingSAE[TopKCrosscoderTrainingConfig]):
    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._topk_encode(x, self.decoder())

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return {"auxk_loss": self.auxk_loss(step_input.sae_in, sae_out, hidden_pre, step_input.dead_neuron_mask)}

    def auxk_loss(
        self,
        sae_in: torch.Tensor,
        sae_out: torch.Tensor,
        hidden_pre: torch.Tensor,
        dead_neuron_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The top aux_k dead latents (by pre-activation) reconstruct what the live ones
        missed. Gradients flow into the dead latents' encoder and decoder rows; the loss is
        normalised by the residual's variance, as in Gao et al. 2024."""
        if dead_neuron_mask is None or self.cfg.aux_loss_coefficient == 0:
            return sae_out.new_zeros(())
        num_dead = int(dead_neuron_mask.sum())
        if num_dead == 0:
            return sae_out.new_zeros(())
        nominal_k = self.cfg.aux_k or self.cfg.d_in // 2
        k_aux = min(nominal_k, num_dead)
        residual = (sae_in - sae_out).detach()
        candidates = torch.where(dead_neuron_mask[None].to(hidden_pre.device), hidden_pre, -torch.inf)
        top = candidates.topk(k_aux, dim=-1, sorted=False)
        aux_acts = torch.zeros_like(hidden_pre).scatter(-1, top.indices, top.values)
        aux_recon = aux_acts @ self.decoder().to(aux_acts.dtype)
        denom = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp(min=1e-8)
        aux = (aux_recon - residual).pow(2).sum(-1).mean() / denom
        return self.cfg.aux_loss_coefficient * min(num_dead / nominal_k, 1.0) * aux


class BatchTopKCrosscoderTrainingSAE(_ThresholdEncode, TopKCrosscoderTrainingSAE):
    """Training uses BatchTopK; `encode`/`forward` (inference, evals) use the threshold."""

    cfg: BatchTopKCrosscoderTrainingConfig  # type: ignore[assignment]

    def __init__(self, cfg: BatchTopKCrosscoderTrainingConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]
        self.current_k: float = float(cfg.k_anneal_start or cfg.k)

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64, device=self.device))

    def k_at_step(self, step: int) -> float:
        cfg = self.cfg
        if cfg.k_anneal_start is None or cfg.k_anneal_steps <= 0 or step >= cfg.k_anneal_steps:
            return float(cfg.k)
        frac = step / cfg.k_anneal_steps
        return float(cfg.k_anneal_start + (cfg.k - cfg.k_anneal_start) * frac)

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._threshold_encode(x)

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_pre = self.pre_activations(x)
        acts = hidden_pre.relu()
        scores = self.ranking_scores(acts.detach(), self.decoder().detach())
        feature_acts = self.hook_sae_acts_post(batch_topk(scores, acts, self.current_k))
        return feature_acts, hidden_pre

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        self.current_k = self.k_at_step(step_input.n_training_steps)
        output = super().training_forward_pass(step_input)
        if self.current_k == float(self.cfg.k):
            self.update_threshold(output.feature_acts)
        output.metrics["threshold"] = float(self.threshold)
        output.metrics["k"] = self.current_k
        return output

    @torch.no_grad()
    def update_threshold(self, feature_acts: torch.Tensor) -> None:
        scores = self.ranking_scores(feature_acts.detach(), self.decoder().detach())
        positive = scores[scores > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().to(torch.float64)
        if float(self.threshold) == 0.0:
            self.threshold.fill_(smallest)
        else:
            lr = self.cfg.threshold_lr
            self.threshold.mul_(1 - lr).add_(lr * smallest)
