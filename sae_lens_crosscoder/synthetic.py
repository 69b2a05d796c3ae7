"""Paired activations with planted ground truth: shared, model-exclusive and
"weaker in one model" features. Used by the tests, the benchmarks and the quick demo.

Each feature has a direction per model (zero where absent). Feature coefficients come from
SAELens's `ActivationGenerator` (independent sparse firings); every model sees the same
coefficients on the same token, as two models do on identical tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from sae_lens.synthetic import ActivationGenerator

from sae_lens_crosscoder.activation_cache import CacheInfo, PairedCacheWriter


@dataclass
class PlantedFeatures:
    """directions: [n_features, n_models, d_model]; kinds: "shared", "only:<m>", or
    "weaker:<m>" (present in every model, scaled by `weak_factor` in model m)."""

    directions: torch.Tensor
    kinds: list[str]

    @property
    def n_features(self) -> int:
        return self.directions.shape[0]

    def indices(self, kind: str) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == kind]


def planted_paired_features(
    d_model: int = 32,
    n_models: int = 2,
    n_shared: int = 16,
    n_exclusive: int = 6,
    n_weaker: int = 0,
    weak_factor: float = 0.3,
    weaker_model: int = 0,
    drift: float = 0.0,
    seed: int = 0,
) -> PlantedFeatures:
    """Features are orthogonal within each model whenever they fit in d_model.

    drift > 0 rotates shared directions a little in models after the first, as fine-tuning
    does. Exclusive features of different models use different random directions."""
    gen = torch.Generator().manual_seed(seed)
    n_per_model = n_shared + n_weaker + n_exclusive
    basis = torch.linalg.qr(torch.randn(d_model, max(d_model, n_per_model), generator=gen))[0]
    if n_per_model > d_model:  # overcomplete: fall back to random unit directions
        basis = torch.nn.functional.normalize(torch.randn(d_model, n_per_model, generator=gen), dim=0)
    common = basis[:, : n_shared + n_weaker].T
    rows, kinds = [], []
    for i in range(n_shared + n_weaker):
        per_model = []
        for m in range(n_models):
            v = common[i]
            if m > 0 and drift > 0:
                v = torch.nn.functional.normalize(v + drift * torch.randn(d_model, generator=gen), dim=0)
            if i >= n_shared and m == weaker_model:
                v = v * weak_factor
            per_model.append(v)
        rows.append(torch.stack(per_model))
        kinds.append("shared" if i < n_shared else f"weaker:{weaker_model}")
    free = basis[:, n_shared + n_weaker : n_per_model]
    for m in range(n_models):
        if free.shape[1]:
            rotation = torch.linalg.qr(torch.randn(free.shape[1], free.shape[1], generator=gen))[0]
            exclusive = (free @ rotation).T
        else:
            exclusive = torch.zeros(0, d_model)
        for j in range(n_exclusive):
            row = torch.zeros(n_models, d_model)
            row[m] = exclusive[j]
            rows.append(row)
            kinds.append(f"only:{m}")
    return PlantedFeatures(torch.stack(rows).float(), kinds)


class PairedSyntheticSource:
    """Samples ``[n, n_models, d_model]`` activations from planted features.

    model_scales multiplies each model's activations, so the per-model normalisation has
    something to undo; noise_std adds isotropic noise in every model."""

    def __init__(
        self,
        features: PlantedFeatures,
        firing_probability: float = 0.05,
        magnitude_mean: float = 1.0,
        magnitude_std: float = 0.2,
        model_scales: list[float] | None = None,
        noise_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.features = features
        n_models = features.directions.shape[1]
        self.model_scales = torch.tensor(model_scales or [1.0] * n_models).float()
        self.noise_std = noise_std
        self.generator_seed = seed
        self._calls = 0
        self.coefficients = ActivationGenerator(
            features.n_features,
            firing_probabilities=firing_probability,
            mean_firing_magnitudes=magnitude_mean,
            std_firing_magnitudes=magnitude_std,
        )

    @property
    def n_models(self) -> int:
        return self.features.directions.shape[1]

    @property
    def d_model(self) -> int:
        return self.features.directions.shape[2]

    @torch.no_grad()
    def sample_with_coefficients(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        # ActivationGenerator draws from the global RNG; fork it so sampling is
        # reproducible and leaves the caller's RNG untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.generator_seed * 100_003 + self._calls)
            self._calls += 1
            coeffs = self.coefficients.sample(n)
            acts = torch.einsum("nf,fmd->nmd", coeffs, self.features.directions)
            if self.noise_std:
                acts = acts + self.noise_std * torch.randn_like(acts)
        return acts * self.model_scales[None, :, None], coeffs

    def sample(self, n: int) -> torch.Tensor:
        return self.sample_with_coefficients(n)[0]

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Infinite flat ``[batch, n_models * d_model]`` batches, for SAETrainer."""
        while True:
            yield self.sample(batch_size).flatten(1)


def write_synthetic_cache(
    path: str | Path,
    source: PairedSyntheticSource,
    n_tokens: int,
    shard_tokens: int = 65_536,
    model_names: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> CacheInfo:
    names = model_names or [f"model{m}" for m in range(source.n_models)]
    writer = PairedCacheWriter(
        path,
        source.n_models,
        source.d_model,
        shard_tokens=shard_tokens,
        dtype=dtype,
        manifest={"model_names": names, "source": "synthetic"},
    )
    written = 0
    while written < n_tokens:
        n = min(shard_tokens, n_tokens - written)
        writer.add(source.sample(n))
        written += n
    return writer.close()


@torch.no_grad()
def match_planted(decoder: torch.Tensor, features: PlantedFeatures, scaling: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """For each planted feature, the latent whose decoder row ([d_sae, n_models, d_model],
    in the crosscoder's normalised space) is most cosine-similar to the feature's
    concatenated direction. `scaling` ([n_models]) maps raw directions into that space."""
    truth = features.directions
    if scaling is not None:
        truth = truth * scaling[None, :, None]
    truth_flat = torch.nn.functional.normalize(truth.flatten(1), dim=-1)
    dec_flat = torch.nn.functional.normalize(decoder.flatten(1), dim=-1)
    cos = truth_flat @ dec_flat.T
    best = cos.max(dim=-1)
    return {"latent": best.indices, "cosine": best.values}
