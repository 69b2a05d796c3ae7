"""`jumprelu_crosscoder`: JumpReLU latents with learned per-latent thresholds, trained
through SAELens's straight-through estimators, with sparsity on f_j * sum_m ||d_j^m||
(Anthropic's tanh form) or on the L0 (DeepMind's step form)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from sae_lens.saes.jumprelu_sae import JumpReLU, Step, calculate_pre_act_loss
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import nn
from typing_extensions import override

from sae_lens_crosscoder.architectures.base import (
    CrosscoderFields,
    CrosscoderMixin,
    CrosscoderTrainingMixin,
)
from sae_lens_crosscoder.errors import CrosscoderUserError


@dataclass
class JumpReLUCrosscoderConfig(SAEConfig, CrosscoderFields):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_crosscoder_fields()

    @override
    @classmethod
    def architecture(cls) -> str:
        return "jumprelu_crosscoder"


@dataclass
class JumpReLUCrosscoderTrainingConfig(TrainingSAEConfig, CrosscoderFields):
    """sparsity_loss_mode "tanh": sum_j c_j tanh(tanh_scale * f_j * sum_m ||d_j^m||);
    "l0": sum_j c_j 1[pre_j > theta_j] (straight-through). Both times l0_coefficient, which
    warms up linearly over l0_warm_up_steps. pre_act_loss_coefficient enables Anthropic's
    pre-activation loss on dead latents.

    Defaults follow Anthropic's JumpReLU crosscoder recipe (Jan 2025): tanh penalty with
    c = 4, bandwidth 2, threshold 0.1, straight-through gradient to the input, pre-act loss
    3e-6. In the normalised space the squared error of a token is ~d_in, so the runner
    scales l0_coefficient with d_in."""

    jumprelu_init_threshold: float = 0.1
    jumprelu_bandwidth: float = 2.0
    sparsity_loss_mode: Literal["tanh", "l0"] = "tanh"
    l0_coefficient: float = 1.0
    l0_warm_up_steps: int = 0
    tanh_scale: float = 4.0
    pre_act_loss_coefficient: float | None = 3e-6
    jumprelu_ste_to_input: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_crosscoder_fields()
        if self.sparsity_loss_mode not in ("tanh", "l0"):
            raise CrosscoderUserError(
                f"sparsity_loss_mode={self.sparsity_loss_mode!r}: use 'tanh' or 'l0'"
            )

    @override
    @classmethod
    def architecture(cls) -> str:
        return "jumprelu_crosscoder"


class JumpReLUCrosscoder(CrosscoderMixin, SAE[JumpReLUCrosscoderConfig]):
    threshold: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.threshold = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=torch.float32, device=self.device))

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        hidden_pre = self.pre_activations(x)
        mask = hidden_pre > self.threshold.to(hidden_pre.dtype)
        return self.hook_sae_acts_post(hidden_pre.relu() * mask)

    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        norms = self.get_W_dec_norm()
        super().fold_W_dec_norm()  # type: ignore[misc]
        self.threshold.data *= norms.to(self.threshold.dtype)


class JumpReLUCrosscoderTrainingSAE(CrosscoderTrainingMixin, TrainingSAE[JumpReLUCrosscoderTrainingConfig]):
    threshold: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.threshold = nn.Parameter(
            torch.full((self.cfg.d_sae,), self.cfg.jumprelu_init_threshold, dtype=torch.float32, device=self.device)
        )

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_pre = self.pre_activations(x)
        acts = JumpReLU.apply(
            hidden_pre,
            self.threshold.to(hidden_pre.dtype),
            self.cfg.jumprelu_bandwidth,
            self.cfg.jumprelu_ste_to_input,
        )
        return self.hook_sae_acts_post(acts), hidden_pre  # type: ignore[arg-type]

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        with torch.no_grad():
            self.threshold.data.clamp_(min=0.0)
        return super().training_forward_pass(step_input)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"l0": TrainCoefficientConfig(self.cfg.l0_coefficient, self.cfg.l0_warm_up_steps)}

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        norms = self.decoder_norms(self.decoder()).sum(-1)
        weights = self.latent_sparsity_weights.to(hidden_pre.dtype)
        threshold = self.threshold.to(hidden_pre.dtype)
        if self.cfg.sparsity_loss_mode == "tanh":
            per_latent = torch.tanh(self.cfg.tanh_scale * feature_acts * norms.to(feature_acts.dtype))
        else:
            per_latent = Step.apply(hidden_pre, threshold, self.cfg.jumprelu_bandwidth, self.cfg.jumprelu_ste_to_input)
        sparsity = (per_latent * weights).sum(-1).mean()  # type: ignore[operator]
        losses = {"sparsity_loss": step_input.coefficients["l0"] * sparsity}
        if self.cfg.pre_act_loss_coefficient is not None:
            losses["pre_act_loss"] = calculate_pre_act_loss(
                self.cfg.pre_act_loss_coefficient, threshold, hidden_pre, step_input.dead_neuron_mask, norms
            )
        return losses

    @override
    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        out = super()._apply(*args, **kwargs)
        # Adam's small steps on an O(1) threshold round away in low precision
        threshold = self._parameters.get("threshold")
        if threshold is not None and threshold.dtype != torch.float32:
            threshold.data = threshold.data.float()
        return out
