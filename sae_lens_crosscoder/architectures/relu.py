"""`crosscoder`: ReLU latents, L1 penalty on f_j * sum_m ||d_j^m|| (Lindsey et al. 2024)."""

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
)
from typing_extensions import override

from sae_lens_crosscoder.architectures.base import (
    CrosscoderFields,
    CrosscoderMixin,
    CrosscoderTrainingMixin,
)


@dataclass
class CrosscoderConfig(SAEConfig, CrosscoderFields):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_crosscoder_fields()

    @override
    @classmethod
    def architecture(cls) -> str:
        return "crosscoder"


@dataclass
class CrosscoderTrainingConfig(TrainingSAEConfig, CrosscoderFields):
    """l1_coefficient multiplies sum_j c_j f_j sum_m ||d_j^m|| (mean over tokens), reached
    linearly over l1_warm_up_steps."""

    l1_coefficient: float = 1.0
    l1_warm_up_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_crosscoder_fields()

    @override
    @classmethod
    def architecture(cls) -> str:
        return "crosscoder"


def _relu_encode(sae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hidden_pre = sae.pre_activations(x)
    return sae.hook_sae_acts_post(hidden_pre.relu()), hidden_pre


class Crosscoder(CrosscoderMixin, SAE[CrosscoderConfig]):
    """Inference class of the L1 (ReLU) crosscoder."""

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return _relu_encode(self, x)[0]


class CrosscoderTrainingSAE(CrosscoderTrainingMixin, TrainingSAE[CrosscoderTrainingConfig]):
    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _relu_encode(self, x)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"l1": TrainCoefficientConfig(self.cfg.l1_coefficient, self.cfg.l1_warm_up_steps)}

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        weighted_norms = self.decoder_norms(self.decoder()).sum(-1) * self.latent_sparsity_weights
        l1 = (feature_acts * weighted_norms.to(feature_acts.dtype)).sum(-1).mean()
        return {"l1_loss": step_input.coefficients["l1"] * l1}
