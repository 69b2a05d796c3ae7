"""`AnalysisConfig`: everything the `analyze` command can be told, as one dataclass that
round-trips through a plain dict (it is stored in `summary.json`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.strict_dicts import dataclass_from_dict

RULES = ("minder", "latent_scaling")


@dataclass
class SelectionThresholds:
    """Cut-offs of the selection rules (Minder et al. 2025 defaults).

    A latent is `only:<second>` when delta_norm >= delta_norm_exclusive (rule "minder" only),
    |nu_error| < nu_error_max and |nu_reconstruction| < nu_reconstruction_max; `only:<first>`
    symmetrically (delta_norm <= 1 - delta_norm_exclusive, reverse nus); `shared` when
    delta_norm lies in [shared_low, shared_high]; `other` otherwise. Rule "latent_scaling"
    drops the delta_norm cut (keeping only which side the latent leans to)."""

    delta_norm_exclusive: float = 0.9
    nu_error_max: float = 0.2
    nu_reconstruction_max: float = 0.5
    shared_low: float = 0.4
    shared_high: float = 0.6

    def validate(self) -> None:
        if not 0.5 < self.delta_norm_exclusive <= 1.0:
            raise CrosscoderUserError(
                f"delta_norm_exclusive={self.delta_norm_exclusive} must be in (0.5, 1]; the first model's "
                "side is the mirror image 1 - delta_norm_exclusive"
            )
        if not 0.0 <= self.shared_low <= self.shared_high <= 1.0:
            raise CrosscoderUserError(
                f"shared band [{self.shared_low}, {self.shared_high}] must satisfy 0 <= low <= high <= 1"
            )


@dataclass
class AnalysisConfig:
    """Options of one analysis pass.

    n_tokens: token budget (rows counted; excluded tokens such as BOS do not count). None reads
        the whole cache; a live source then defaults to 1,000,000.
    pair: the compared models, as indices or names ([first, second]); delta_norm is 0 for
        first-only latents and 1 for second-only ones, and nu is second relative to first.
    latent_chunk_size: latents per Latent Scaling chunk; None sizes chunks so each per-target
        accumulator block holds about 8M floats.
    example_latents: latents to collect examples for (None: every latent).
    ce_eval_tokens: tokens of the live source used for the CE/KL splice evals (0: skip).
    """

    n_tokens: int | None = None
    batch_tokens: int = 4096
    pair: list[int | str] = field(default_factory=lambda: [0, 1])
    rule: Literal["minder", "latent_scaling"] = "minder"
    thresholds: SelectionThresholds = field(default_factory=SelectionThresholds)
    latent_chunk_size: int | None = None
    n_top_examples: int = 10
    window: int = 8
    n_quantiles: int = 4
    examples_per_quantile: int = 3
    example_latents: list[int] | None = None
    ce_eval_tokens: int = 16_384
    report_max_cards: int = 200
    device: str = "cpu"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, dict):
            self.thresholds = dataclass_from_dict(SelectionThresholds, self.thresholds, "thresholds")
        self.validate()

    def validate(self) -> None:
        if self.rule not in RULES:
            raise CrosscoderUserError(f"rule={self.rule!r}: choose one of {', '.join(RULES)}")
        if self.n_tokens is not None and self.n_tokens <= 0:
            raise CrosscoderUserError(f"n_tokens={self.n_tokens} must be positive (or omitted for the whole cache)")
        for name in ("batch_tokens", "n_quantiles"):
            if getattr(self, name) <= 0:
                raise CrosscoderUserError(f"{name}={getattr(self, name)} must be positive")
        for name in ("n_top_examples", "window", "examples_per_quantile", "ce_eval_tokens", "report_max_cards"):
            if getattr(self, name) < 0:
                raise CrosscoderUserError(f"{name}={getattr(self, name)} must be >= 0")
        if self.latent_chunk_size is not None and self.latent_chunk_size <= 0:
            raise CrosscoderUserError(f"latent_chunk_size={self.latent_chunk_size} must be positive")
        if len(self.pair) != 2 or self.pair[0] == self.pair[1]:
            raise CrosscoderUserError(f"pair={self.pair} must name two different models, e.g. 0,1 or base,chat")
        self.thresholds.validate()

    @property
    def reservoir_size(self) -> int:
        return self.n_quantiles * self.examples_per_quantile

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AnalysisConfig:
        return dataclass_from_dict(cls, raw, "analysis config")
