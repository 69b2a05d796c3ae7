"""Crosscoder architectures, registered in SAELens's registries by architecture name."""

from __future__ import annotations

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from sae_lens_crosscoder.architectures.base import CrosscoderMixin, CrosscoderTrainingMixin, per_model_metrics
from sae_lens_crosscoder.architectures.jumprelu import (
    JumpReLUCrosscoder,
    JumpReLUCrosscoderConfig,
    JumpReLUCrosscoderTrainingConfig,
    JumpReLUCrosscoderTrainingSAE,
)
from sae_lens_crosscoder.architectures.relu import (
    Crosscoder,
    CrosscoderConfig,
    CrosscoderTrainingConfig,
    CrosscoderTrainingSAE,
)
from sae_lens_crosscoder.architectures.topk import (
    BatchTopKCrosscoder,
    BatchTopKCrosscoderConfig,
    BatchTopKCrosscoderTrainingConfig,
    BatchTopKCrosscoderTrainingSAE,
    TopKCrosscoder,
    TopKCrosscoderConfig,
    TopKCrosscoderTrainingConfig,
    TopKCrosscoderTrainingSAE,
)

# architecture name -> (inference class, inference config, training class, training config)
ARCHITECTURES = {
    "crosscoder": (Crosscoder, CrosscoderConfig, CrosscoderTrainingSAE, CrosscoderTrainingConfig),
    "topk_crosscoder": (TopKCrosscoder, TopKCrosscoderConfig, TopKCrosscoderTrainingSAE, TopKCrosscoderTrainingConfig),
    "batchtopk_crosscoder": (
        BatchTopKCrosscoder,
        BatchTopKCrosscoderConfig,
        BatchTopKCrosscoderTrainingSAE,
        BatchTopKCrosscoderTrainingConfig,
    ),
    "jumprelu_crosscoder": (
        JumpReLUCrosscoder,
        JumpReLUCrosscoderConfig,
        JumpReLUCrosscoderTrainingSAE,
        JumpReLUCrosscoderTrainingConfig,
    ),
}


def register_architectures() -> None:
    """Register every crosscoder with SAELens. Safe to call any number of times: SAELens
    raises on a second registration, so names already present are skipped."""
    for name, (cls, cfg_cls, training_cls, training_cfg_cls) in ARCHITECTURES.items():
        if name not in SAE_CLASS_REGISTRY:
            register_sae_class(name, cls, cfg_cls)
        if name not in SAE_TRAINING_CLASS_REGISTRY:
            register_sae_training_class(name, training_cls, training_cfg_cls)


__all__ = [
    "ARCHITECTURES",
    "BatchTopKCrosscoder",
    "BatchTopKCrosscoderConfig",
    "BatchTopKCrosscoderTrainingConfig",
    "BatchTopKCrosscoderTrainingSAE",
    "Crosscoder",
    "CrosscoderConfig",
    "CrosscoderMixin",
    "CrosscoderTrainingConfig",
    "CrosscoderTrainingMixin",
    "CrosscoderTrainingSAE",
    "JumpReLUCrosscoder",
    "JumpReLUCrosscoderConfig",
    "JumpReLUCrosscoderTrainingConfig",
    "JumpReLUCrosscoderTrainingSAE",
    "TopKCrosscoder",
    "TopKCrosscoderConfig",
    "TopKCrosscoderTrainingConfig",
    "TopKCrosscoderTrainingSAE",
    "per_model_metrics",
    "register_architectures",
]
